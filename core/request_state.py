"""What the engine keeps per request between steps, and the RequestOutput it reports from it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.detokenizer import IncrementalDetokenizer
from core.outputs import CompletionOutput, RequestOutput, Usage
from core.sampling_params import SamplingParams
from core.sequence import Sequence
from core.stop_strings import StopStringMatcher


@dataclass
class SeqState:
    """One sequence of a request: its detokenizer, stop strings and what was reported."""

    seq: Sequence
    detok: IncrementalDetokenizer
    stops: StopStringMatcher
    text: str = ""
    emitted_tokens: int = 0  # output tokens already reported
    pending_text: str = ""  # text produced since the last report
    emitted_logprobs: int = 0


@dataclass
class RequestState:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    states: list[SeqState]
    session_id: str | None
    prompt: str | None
    arrival: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None

    def output(self, finished: bool = False) -> RequestOutput:
        """Everything so far plus the deltas since the last output (which this marks reported)."""
        outs = []
        for st in self.states:
            seq = st.seq
            delta_ids = seq.output_token_ids[st.emitted_tokens :]
            delta_lp = seq.logprobs[st.emitted_logprobs :]
            st.emitted_tokens = seq.num_output_tokens
            st.emitted_logprobs = len(seq.logprobs)
            st.text += st.pending_text
            outs.append(
                CompletionOutput(
                    index=seq.index,
                    text=st.text,
                    token_ids=seq.output_token_ids,
                    delta_text=st.pending_text,
                    delta_token_ids=delta_ids,
                    finish_reason=seq.finish_reason,
                    stop_reason=seq.stop_reason,
                    logprobs=list(seq.logprobs),
                    delta_logprobs=delta_lp,
                )
            )
            st.pending_text = ""
        usage = Usage(
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=sum(st.seq.num_output_tokens for st in self.states),
            cached_tokens=self.states[0].seq.num_cached_prompt_tokens,
        )
        return RequestOutput(
            self.request_id, self.prompt_ids, outs, finished, usage, self.session_id, self.prompt
        )
