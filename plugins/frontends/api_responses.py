"""Engine outputs as OpenAI response bodies: usage, logprobs, choices; SSE framing and the
streaming response that always cleans up."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core.outputs import CompletionOutput, RequestOutput
from core.tokenizer import Tokenizer

MIN_LOGPROB = -9999.0  # JSON has no -inf; OpenAI clients expect a number


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <json>`` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def usage(outputs: Sequence[RequestOutput]) -> dict[str, Any]:
    """Summed over the prompts of one API request (each counts its prompt once, whatever n)."""
    prompt = sum(o.usage.prompt_tokens for o in outputs)
    completion = sum(o.usage.completion_tokens for o in outputs)
    cached = sum(o.usage.cached_tokens for o in outputs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


class LogprobFormatter:
    """The engine's LogprobInfo lists in the chat and the completions layouts."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def _token(self, token_id: int) -> tuple[str, list[int]]:
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        byte = self.tokenizer.byte_value(token_id)
        return text, [byte] if byte is not None else list(text.encode("utf-8"))

    def _entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text, raw = self._token(token_id)
        return {"token": text, "logprob": max(logprob, MIN_LOGPROB), "bytes": raw}

    def chat(self, infos: list) -> dict[str, Any]:
        content = []
        for info in infos:
            entry = self._entry(info.token_id, info.logprob)
            entry["top_logprobs"] = [self._entry(t, lp) for t, lp in info.top]
            content.append(entry)
        return {"content": content}

    def completion(self, infos: list, offset: int = 0) -> dict[str, Any]:
        tokens, token_logprobs, top, offsets = [], [], [], []
        for info in infos:
            text, _ = self._token(info.token_id)
            tokens.append(text)
            token_logprobs.append(max(info.logprob, MIN_LOGPROB))
            top.append({self._token(t)[0]: max(lp, MIN_LOGPROB) for t, lp in info.top})
            offsets.append(offset)
            offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top,
            "text_offset": offsets,
        }


class ChoiceTracker:
    """Which choices of a stream already reported their finish (with n > 1, a finished
    sequence keeps appearing in its request's later outputs)."""

    def __init__(self) -> None:
        self._done: set[int] = set()
        self.text_len: dict[int, int] = {}  # choice index -> text sent so far (text_offset)

    def moved(self, index: int, o: CompletionOutput) -> bool:
        if index in self._done:
            return False
        if o.finish_reason is not None:
            self._done.add(index)
            return True
        return bool(o.delta_text or o.delta_token_ids)


class ClosingStream(StreamingResponse):
    """An SSE response whose ``cleanup`` runs however it ends, even if the client left
    before the first chunk (when the body generator never starts, so never finishes)."""

    def __init__(
        self,
        content: AsyncIterator[str],
        cleanup: Callable[[], None],
        media_type: str = "text/event-stream",
    ) -> None:
        super().__init__(content, media_type=media_type)
        self.headers["Cache-Control"] = "no-cache"
        self.cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.cleanup()
