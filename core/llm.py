"""LLM: the public Python API (generate, stream, chat, abort)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from tqdm import tqdm

from core.config import NybbleConfig, to_config, validate
from core.engine import Engine
from core.outputs import RequestOutput
from core.sampling_params import SamplingParams


class LLM:
    """Offline and interactive generation on one engine.

    ``LLM()`` serves the random ``internlm-tiny`` model; ``LLM(model="internlm-chat-20b",
    overrides=["model.path=./workspace"])`` composes conf/ like the ``nybble`` command does;
    ``LLM(cfg)`` takes an already composed config.
    """

    def __init__(
        self,
        cfg: NybbleConfig | Any | None = None,
        *,
        model: str = "internlm-tiny",
        overrides: Sequence[str] = (),
    ) -> None:
        if cfg is None:
            from core.compose import compose_config

            cfg = compose_config([f"model={model}", *overrides])
        else:
            cfg = validate(to_config(cfg))
        self.cfg = cfg
        self.engine = Engine(cfg)
        self.tokenizer = self.engine.tokenizer
        self.template = self.engine.template
        self._ids = itertools.count()

    @property
    def model_name(self) -> str:
        return self.cfg.model.name

    def sampling_params(self, **overrides: Any) -> SamplingParams:
        """SamplingParams from the config's defaults (``sampling.*``) with ``overrides``."""
        return self.engine.default_params(**overrides)

    def generate(
        self,
        prompts: str | list[str] | list[list[int]],
        sampling: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for a batch of prompts (texts or token-id lists); outputs in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        params = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        ids = [self.engine.add_request(p, s) for p, s in zip(prompts, params)]
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="generating", unit="req", disable=not use_tqdm)
        try:
            while self.engine.has_unfinished():
                for out in self.engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        bar.update()
        except BaseException:
            for rid in ids:
                self.engine.abort(rid)
            raise
        finally:
            bar.close()
        return [done[r] for r in ids]

    def stream(
        self,
        prompt: str | list[int],
        sampling: SamplingParams | None = None,
        session_id: str | None = None,
    ) -> Iterator[RequestOutput]:
        """Yield a request's outputs as tokens arrive (``.outputs[i].delta_text``); closing the
        iterator early aborts the request."""
        rid = self.engine.add_request(prompt, sampling, f"stream-{next(self._ids)}", session_id)
        finished = False
        try:
            while not finished:
                for out in self.engine.step():
                    if out.request_id == rid:
                        finished = out.finished
                        yield out
        finally:
            if not finished:
                self.engine.abort(rid)

    def chat(
        self,
        messages: list[dict[str, str]],
        sampling: SamplingParams | None = None,
        stream: bool = False,
    ) -> RequestOutput | Iterator[RequestOutput]:
        """Answer an OpenAI-style message list, rendered with the model's chat template."""
        prompt = self.template.render(messages, add_generation_prompt=True)
        if stream:
            return self.stream(prompt, sampling)
        return self.generate([prompt], [sampling] if sampling else None, use_tqdm=False)[0]

    def chat_turn(
        self, session_id: str, user_text: str, sampling: SamplingParams | None = None
    ) -> Iterator[RequestOutput]:
        """One turn of a server-side session: only the new message is sent; earlier turns come
        from the prefix cache."""
        if session_id in self.engine.sessions:
            prompt = self.template.render_next_turn(user_text)
        else:
            prompt = self.template.render([{"role": "user", "content": user_text}])
        return self.stream(prompt, sampling, session_id=session_id)

    def end_session(self, session_id: str) -> bool:
        return self.engine.end_session(session_id)

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)
