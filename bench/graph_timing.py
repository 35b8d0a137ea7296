"""Timing a captured CUDA graph: what bench/gemv_graph.py and the step_breakdown task share."""

from __future__ import annotations

import statistics

import torch


def median_replay_ms(graph: torch.cuda.CUDAGraph, replays: int) -> float:
    """Median milliseconds of one replay of ``graph``, each timed alone with CUDA events."""
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
