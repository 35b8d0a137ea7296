"""The request loop: add_request -> step -> outputs, with sessions, aborts and statistics."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from core.block_manager import BlockManager
from core.config import NybbleConfig
from core.detokenizer import IncrementalDetokenizer
from core.engine_stats import EngineStats
from core.model_runner import ModelRunner
from core.outputs import RequestOutput
from core.plugins import Registries, get_registries
from core.request_state import RequestState, SeqState
from core.sampler import PendingSample, Sampler, SamplingBatch, make_generator
from core.sampling_params import SamplingParams
from core.scheduler import ScheduledBatch, Scheduler
from core.sequence import FedTokens, Sequence, SequenceStatus
from core.stop_strings import StopStringMatcher
from core.tokenizer import load_tokenizer
from core.tp_worker import ParallelModelRunner


class RequestError(ValueError):
    """A request the engine cannot serve (too long, empty, unknown session); the message says
    which limit and the sizes."""


@dataclass
class _Launched:
    """A model step queued on the device: its batch, the sequences that sample, their tokens."""

    batch: ScheduledBatch
    sampling: list[Sequence]
    pending: PendingSample | None
    num_prefill: int
    start: float
    token_index: list[int]  # where each sampling sequence's new token goes in its token_ids


class Engine:
    """Owns the model runner, scheduler and sampler; ``step`` advances every running request.

    With ``engine.async_output`` (vLLM's async output processing) a step launches the next
    model step, when that is a decode step, before it reports this one: detokenizing, stop
    strings and building outputs run on the host while the GPU computes. A sequence whose end
    is known from its token alone (EOS, a stop token id, max_tokens, session_len) is not
    scheduled again; one that a stop string ends is already in the launched step, whose token
    for it is then dropped.

    With ``engine.async_scheduling`` as well, a decode step is launched even before the
    previous step's tokens reach the host: each sequence gets a placeholder token, the step
    reads the real one from the sampler's output on the device, and the host writes it in when
    it arrives. The GPU then never waits for the host between decode steps. A sequence that
    the previous token ends (EOS, stop id) has computed one token too many, which is dropped;
    one whose length ends it is left out, as that is known without the token.
    """

    def __init__(self, cfg: NybbleConfig, regs: Registries | None = None) -> None:
        regs = regs or get_registries()
        self.cfg = cfg
        if cfg.engine.tensor_parallel_size > 1:
            self.runner: ModelRunner = ParallelModelRunner(cfg, regs)
        else:
            self.runner = ModelRunner(cfg, regs)
        mc = self.runner.model_config
        self.model_config = mc
        self.tokenizer = load_tokenizer(mc.tokenizer, mc.path)
        self.template = regs.chat_templates.get(mc.chat_template)
        self.session_len = mc.session_len
        self.block_manager = BlockManager(
            self.runner.num_blocks, cfg.engine.block_size, cfg.engine.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.block_manager, cfg.engine.max_batch_size, cfg.engine.max_num_batched_tokens
        )
        self.sampler = Sampler()
        self.eos_ids = tuple(sorted({mc.eos_token_id, *self.template.stop_token_ids}))
        self.requests: dict[str, RequestState] = {}
        self.sessions: dict[str, list[int]] = {}
        self.stats = EngineStats()
        self._ids = itertools.count()
        self._launched: _Launched | None = None  # the model step on the device, if any

    # ---- requests ------------------------------------------------------------------------
    def default_params(self, **overrides) -> SamplingParams:
        return SamplingParams.from_defaults(self.cfg.sampling, **overrides)

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        session_id: str | None = None,
    ) -> str:
        """Queue a request; raise RequestError at once if it can never be served.

        With ``session_id``, ``prompt`` is only the new part of the conversation: it is appended
        to the session's tokens so far (prompt and answers), which the prefix cache still holds.
        """
        params = params or self.default_params()
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already running")
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
            text: str | None = prompt
        else:
            ids, text = list(prompt), None
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise RequestError(
                f"prompt token ids must be in [0, {vocab}); got {[t for t in ids if not 0 <= t < vocab][:5]}"
            )
        if session_id is not None:
            ids = self.sessions.get(session_id, []) + ids
        if not ids:
            raise RequestError("the prompt is empty; send at least one token")
        room = self.session_len - len(ids)
        if room <= 0:
            raise RequestError(
                f"the prompt has {len(ids)} tokens, more than session_len={self.session_len} "
                "allows; shorten it, end the session, or raise model.session_len"
            )
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = room
        elif len(ids) + max_tokens > self.session_len:
            raise RequestError(
                f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) = "
                f"{len(ids) + max_tokens} exceeds session_len={self.session_len}; lower "
                f"max_tokens to at most {room} or shorten the prompt"
            )
        needed = self.block_manager.blocks_needed(len(ids) + max_tokens)
        if needed > self.block_manager.num_blocks:
            fits = self.block_manager.num_blocks * self.block_manager.block_size
            raise RequestError(
                f"prompt + max_tokens = {len(ids) + max_tokens} tokens cannot fit in the whole "
                f"KV cache ({fits} tokens); lower max_tokens or give the KV cache more memory"
            )
        if max_tokens != params.max_tokens:
            params = params.replace(max_tokens=max_tokens)
        states = []
        for index in range(params.n):
            seq = Sequence(request_id, ids, params, index=index, session_id=session_id)
            if params.seed is not None:
                seq.generator = make_generator(params.seed + index, self.runner.device)
            states.append(
                SeqState(
                    seq=seq,
                    detok=IncrementalDetokenizer(self.tokenizer, ids, params.skip_special_tokens),
                    stops=StopStringMatcher(params.stop, params.include_stop_str_in_output),
                )
            )
            self.scheduler.add(seq)
        self.requests[request_id] = RequestState(request_id, ids, params, states, session_id, text)
        self.stats.on_request_added(len(ids))
        return request_id

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its KV blocks; returns its final output (abort)."""
        req = self.requests.get(request_id)
        if req is None:
            return None
        for st in req.states:
            if not st.seq.is_finished:
                self.scheduler.finish(st.seq)
                st.seq.finish_reason = "abort"
            st.seq.drop_placeholders()
        return self._finish_request(req)

    def end_session(self, session_id: str) -> bool:
        """Forget a session's conversation (its blocks stay only as evictable prefix cache)."""
        for req in list(self.requests.values()):
            if req.session_id == session_id:
                self.abort(req.request_id)
        return self.sessions.pop(session_id, None) is not None

    def reset_prefix_cache(self) -> int:
        """Drop the prefix cache (benchmarks that replay prompts; tests); returns blocks freed."""
        return self.block_manager.reset_prefix_cache()

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any (also done at exit)."""
        if isinstance(self.runner, ParallelModelRunner):
            self.runner.close()

    # ---- stepping ------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one model step and report every request that moved (with ``async_output``, the
        next step is already running on the device when this returns)."""
        launched = self._launched or self._launch()
        self._launched = None
        if launched is None:
            return []
        if self._can_feed(launched):
            self._launched = self._launch(feed=launched)
        moved = self._collect(launched)
        if self._launched is None and self.cfg.engine.async_output:
            if self._next_step_decodes_only():
                self._launched = self._launch()
        outputs = []
        for rid in dict.fromkeys(s.request_id for s in moved):
            req = self.requests.get(rid)
            if req is not None:
                outputs.append(self._advance(req))
        return outputs

    def _launch(self, feed: _Launched | None = None) -> _Launched | None:
        """Schedule and queue one model step and its sampling; nothing waits for the device.

        With ``feed``, a step whose tokens have not reached the host yet: the new step decodes
        the sequences it sampled, with those tokens as inputs (async scheduling).
        """
        fed = None
        if feed is None:
            batch = self.scheduler.schedule()
        else:
            for seq in feed.sampling:
                if seq.status is SequenceStatus.RUNNING and not self._at_length(seq, pending=1):
                    seq.append_placeholder()
            batch = self.scheduler.schedule(admit_waiting=False)
            row_of = {s.seq_id: i for i, s in enumerate(feed.sampling)}
            fed = FedTokens(feed.pending.ids, [row_of[s.seq_id] for s in batch.seqs])
        if batch.is_empty:
            return None
        start = time.monotonic()
        num_prefill = sum(
            n
            for s, n in zip(batch.seqs, batch.num_tokens)
            if s.num_computed_tokens < s.num_prompt_tokens
        )
        logits = self.runner.execute(batch, fed)
        sampling = [
            s for s, n in zip(batch.seqs, batch.num_tokens) if s.num_computed_tokens + n == len(s)
        ]
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_computed_tokens += n
            self.block_manager.commit_full_blocks(seq)
        pending = None
        if sampling:
            sbatch = SamplingBatch.build(
                [s.params for s in sampling],
                [s.prompt_token_ids for s in sampling],
                [s.output_token_ids for s in sampling],
                [s.generator for s in sampling],
                self.eos_ids,
            )
            pending = self.sampler.launch(logits, sbatch)
        token_index = [s.num_computed_tokens for s in sampling]
        return _Launched(batch, sampling, pending, num_prefill, start, token_index)

    def _can_feed(self, launched: _Launched) -> bool:
        """Whether the next step can be launched before ``launched``'s tokens are on the host:
        it decodes exactly the sequences that sample now, and none of them needs its tokens so
        far on the host to sample (penalties)."""
        e = self.cfg.engine
        if not (e.async_output and e.async_scheduling and self.runner.can_feed):
            return False
        if launched.pending is None:
            return False
        if self.scheduler.can_admit:
            return False  # a waiting request joins the next step: schedule it with the tokens
        sampling = {s.seq_id for s in launched.sampling}
        return all(
            seq.seq_id in sampling
            and seq.num_uncomputed_tokens == 0
            and not seq.params.has_penalties
            for seq in self.scheduler.running
        )

    def _next_step_decodes_only(self) -> bool:
        """Whether the next step is one token per running sequence: a step that prefills is not
        launched ahead, since its launch (eager, kernel by kernel) would delay this report, the
        first tokens of the requests it prefilled."""
        if self.scheduler.can_admit:
            return False  # a waiting request joins the next step
        return all(seq.num_uncomputed_tokens == 1 for seq in self.scheduler.running)

    def _collect(self, launched: _Launched) -> list[Sequence]:
        """Wait for a launched step's tokens and append them; returns the sequences that got one.

        A sequence finished or aborted since the launch gets none (its token is dropped). One
        that this token ends for sure leaves the scheduler now, before the next launch.
        """
        moved = []
        if launched.pending is not None:
            out = launched.pending.result()  # the step's one host sync
            rows = zip(launched.sampling, launched.token_index, out.token_ids, out.logprobs)
            for seq, index, token, lp in rows:
                if seq.is_finished:
                    continue
                if seq.set_token(index, token):  # the placeholder of a step launched since
                    self.block_manager.commit_full_blocks(seq)  # its block may be full now
                if lp is not None:
                    seq.logprobs.append(lp)
                if self._ends_with(seq, token):
                    self.scheduler.finish(seq)  # its request reports the end in _advance
                moved.append(seq)
        self.stats.on_step(launched.num_prefill, time.monotonic() - launched.start)
        return moved

    def _is_stop_token(self, seq: Sequence, token: int) -> bool:
        p = seq.params
        return token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_ids)

    def _at_length(self, seq: Sequence, pending: int = 0) -> bool:
        """Whether ``seq`` is at its length limit (with ``pending`` tokens still to come)."""
        return (
            seq.num_output_tokens + pending >= seq.params.max_tokens
            or len(seq) + pending >= self.session_len
        )

    def _ends_with(self, seq: Sequence, token: int) -> bool:
        """Whether ``token`` (just appended) ends ``seq`` whatever text it makes."""
        return self._is_stop_token(seq, token) or self._at_length(seq)

    def _check_finished(self, st: SeqState, new_tokens: list[int]) -> None:
        seq = st.seq
        for t in new_tokens:
            if self._is_stop_token(seq, t):
                seq.finish_reason, seq.stop_reason = "stop", t
        if seq.finish_reason is None and st.stops.matched is not None:
            seq.finish_reason, seq.stop_reason = "stop", st.stops.matched
        if seq.finish_reason is None and self._at_length(seq):
            seq.finish_reason = "length"

    def _advance(self, req: RequestState) -> RequestOutput:
        now = time.monotonic()
        if req.first_token_time is None:
            req.first_token_time = now
            self.stats.on_first_token(now - req.arrival)
        for st in req.states:
            seq = st.seq
            if seq.finish_reason is not None:  # reported finished (it may have left earlier)
                continue
            new = seq.output_token_ids[st.emitted_tokens :]
            if new and st.stops.matched is None:
                st.pending_text += st.stops.feed(st.detok.step(new))[0]
            self._check_finished(st, new)
            if seq.finish_reason is not None:
                if st.stops.matched is None:
                    st.pending_text += st.stops.feed(st.detok.flush())[0]
                    st.pending_text += st.stops.flush()
                self.scheduler.finish(seq)
        self.stats.on_tokens(
            sum(len(st.seq.output_token_ids) - st.emitted_tokens for st in req.states)
        )
        if all(st.seq.is_finished for st in req.states):
            return self._finish_request(req)
        return req.output()

    def _finish_request(self, req: RequestState) -> RequestOutput:
        self.requests.pop(req.request_id, None)
        if req.session_id is not None:
            # the conversation so far, answer included (also a partial, aborted one)
            self.sessions[req.session_id] = list(req.states[0].seq.token_ids)
        for st in req.states:
            self.stats.on_finished(st.seq.finish_reason or "abort")
        return req.output(finished=True)
