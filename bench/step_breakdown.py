"""nybble-bench task=step_breakdown: where one decode step's wall time goes.

For each concurrency B: B requests of ``token_pairs[0] = [prompt, steps]`` prompt tokens are
prefilled, then ``steps`` decode steps run together; the engine's phases are timed on the host
for every decode step (schedule; execute: the model's launch; sampler_launch: queuing the
sampling ops and their per-row inputs; sample: waiting for the step's tokens and appending
them; report: detokenize, stop checks, outputs, which with ``engine.async_output`` run while
the next step computes). On CUDA the captured graph is also replayed alone and timed with
events: its time is the model's share of a step. The rest of the step's wall time (``host_ms``)
is all that runs outside the graph: the sampling kernels and the input copies on the GPU (~40
eager ops, not timed apart here) and host work the GPU waits for; the phase columns time the
host's side. Writes step_breakdown-<gpu>.csv.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.graph_timing import median_replay_ms
from bench.hardware import copy_bandwidth, gpu_name, gpu_slug, versions
from bench.sweep import write_csv
from bench.token_throughput import kv_bytes_per_token, weight_bytes_per_step
from core.engine import Engine
from core.sampling_params import SamplingParams

PHASES = ("schedule", "execute", "sampler_launch", "sample", "report")
COLUMNS = ["batch", "prompt_tokens", "steps", "step_ms", "graph_ms", "host_ms", "limit_ms",
           "frac_limit", "graph_frac_limit"] + [f"{p}_ms" for p in PHASES]  # fmt: skip


class _Timers:
    """Wraps bound methods so each call adds its wall time to a phase while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.acc = dict.fromkeys(PHASES, 0.0)

    def wrap(self, obj, attr: str, phase: str) -> None:
        fn = getattr(obj, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.on:
                    self.acc[phase] += time.perf_counter() - t0

        setattr(obj, attr, timed)


def graph_replay_ms(engine: Engine, batch: int, replays: int = 50) -> float:
    """Median GPU time of the decode graph for ``batch`` rows replayed alone (CUDA only)."""
    graphs = engine.runner.graphs
    if graphs is None or not torch.cuda.is_available():
        return float("nan")
    bs = next(s for s in graphs.sizes if s >= batch)
    return median_replay_ms(graphs.graphs[bs], replays)


def measure(engine: Engine, timers: _Timers, batch: int, prompt: int, steps: int, cfg, bw) -> dict:
    params = SamplingParams.from_defaults(cfg.sampling, max_tokens=steps + 1, ignore_eos=True)
    rng = np.random.default_rng([cfg.seed, batch])  # no prefix-cache hits across batches
    vocab = engine.model_config.vocab_size
    for i in range(batch):
        engine.add_request(rng.integers(3, min(vocab, 100_000), prompt).tolist(), params, f"s{i}")
    sched = engine.scheduler
    while sched.waiting or not all(s.num_output_tokens for s in sched.running):
        engine.step()  # prefill (chunked, maybe over several steps)
    walls, per_step = [], []
    for _ in range(steps):
        timers.acc = dict.fromkeys(PHASES, 0.0)
        timers.on = True
        t0 = time.perf_counter()
        engine.step()
        walls.append(time.perf_counter() - t0)
        timers.on = False
        per_step.append(dict(timers.acc))
    while engine.has_unfinished():
        engine.step()
    step_ms = statistics.median(walls) * 1e3
    graph_ms = graph_replay_ms(engine, batch)
    ctx = prompt + steps / 2
    limit_ms = (weight_bytes_per_step(engine) + batch * ctx * kv_bytes_per_token(engine)) / bw * 1e3
    row = {"batch": batch, "prompt_tokens": prompt, "steps": steps, "step_ms": step_ms,
           "graph_ms": graph_ms, "host_ms": step_ms - graph_ms, "limit_ms": limit_ms,
           "frac_limit": limit_ms / step_ms, "graph_frac_limit": limit_ms / graph_ms}  # fmt: skip
    for p in PHASES:
        row[f"{p}_ms"] = statistics.median(s[p] for s in per_step) * 1e3
    return row


def run(cfg) -> list[dict]:
    name, out_dir = gpu_name(), Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() and cfg.engine.device != "cpu" else "cpu"
    bw = copy_bandwidth(device)
    print(f"{name} | {versions()} | copy bandwidth {bw / 1e9:.0f} GB/s")
    cfg.engine.max_batch_size = max(cfg.engine.max_batch_size, max(cfg.concurrency))
    engine = Engine(cfg)
    timers = _Timers()
    timers.wrap(engine.scheduler, "schedule", "schedule")
    timers.wrap(engine.runner, "execute", "execute")
    timers.wrap(engine.sampler, "launch", "sampler_launch")
    timers.wrap(engine, "_collect", "sample")
    timers.wrap(engine, "_advance", "report")
    prompt = int(cfg.token_pairs[0][0])
    steps = int(cfg.token_pairs[0][1])
    rows = []
    for b in cfg.concurrency:
        row = measure(engine, timers, b, prompt, steps, cfg, bw)
        rows.append(row)
        print(f"batch {b:3d}: step {row['step_ms']:6.2f} ms = graph {row['graph_ms']:6.2f} + host "
              f"{row['host_ms']:5.2f} | limit {row['limit_ms']:5.2f} ms (frac {row['frac_limit']:.2f},"
              f" graph alone {row['graph_frac_limit']:.2f}) | " + " ".join(
                  f"{p} {row[p + '_ms']:.3f}" for p in PHASES), flush=True)  # fmt: skip
    path = out_dir / f"step_breakdown-{gpu_slug(name)}.csv"
    write_csv(rows, COLUMNS, path)
    print(f"wrote {path}")
    return rows
