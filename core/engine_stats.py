"""Counters and latency histograms the engine keeps for metrics endpoints and benchmarks."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

# Bucket upper bounds in seconds (Prometheus layout; +Inf is implicit). Time to first token
# spans a cached decode on a GPU (ms) to a long prefill queued behind others on a CPU (s).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0)  # fmt: skip
# Inter-token latency: one decode step of a batch, a few ms on a GPU to ~1 s on a loaded CPU.
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
               0.75, 1.0, 2.5)  # fmt: skip


@dataclass
class Histogram:
    """Counts of observations per bucket (``le`` upper bounds), their sum and their number."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, the last one is +Inf
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(le, observations <= le)`` per bucket, ending with ``(inf, count)``."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out


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
    ttft_histogram: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    # filled by whoever sees tokens arrive per request (core/async_engine.py)
    itl_histogram: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))

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
        self.ttft_histogram.observe(seconds)
        if len(self.ttft) > 10_000:
            del self.ttft[:5_000]

    def on_inter_token(self, seconds: float) -> None:
        """Time between two consecutive outputs with new tokens of one request."""
        self.itl_histogram.observe(seconds)

    def on_tokens(self, n: int) -> None:
        self.generation_tokens += n

    def on_finished(self, reason: str) -> None:
        self.finished[reason] += 1
