"""Counters the engine keeps for metrics endpoints and benchmarks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class EngineStats:
    num_requests: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_steps: int = 0
    num_prefill_tokens: int = 0  # tokens computed by the model in prefill chunks
    finished: Counter = field(default_factory=Counter)  # finish_reason -> count
    ttft: list[float] = field(default_factory=list)  # seconds, per request
    step_times: list[float] = field(default_factory=list)

    def on_request_added(self, num_prompt_tokens: int) -> None:
        self.num_requests += 1
        self.prompt_tokens += num_prompt_tokens

    def on_step(self, num_prefill_tokens: int, seconds: float) -> None:
        self.num_steps += 1
        self.num_prefill_tokens += num_prefill_tokens
        self.step_times.append(seconds)
        if len(self.step_times) > 10_000:
            del self.step_times[:5_000]

    def on_first_token(self, seconds: float) -> None:
        self.ttft.append(seconds)
        if len(self.ttft) > 10_000:
            del self.ttft[:5_000]

    def on_tokens(self, n: int) -> None:
        self.generation_tokens += n

    def on_finished(self, reason: str) -> None:
        self.finished[reason] += 1
