"""What the engine hands back: per-request outputs with text deltas and usage."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    """One sequence of a request (``n`` > 1 requests have several)."""

    index: int
    text: str  # everything generated so far (stop strings removed unless asked)
    token_ids: list[int]
    delta_text: str = ""  # new since the previous output of this request
    delta_token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop", "length", "abort"
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    logprobs: list = field(default_factory=list)  # LogprobInfo per generated token, if asked
    delta_logprobs: list = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    usage: Usage
    session_id: str | None = None
    prompt: str | None = None

    @property
    def text(self) -> str:
        return self.outputs[0].text
