"""nybble-bench task=step_breakdown: where one decode step's wall time goes.

For each concurrency B: B requests of ``token_pairs[0] = [prompt, steps]`` prompt tokens are
prefilled, then ``steps`` decode steps run together; the engine's phases are timed on the host
for every decode step (schedule; execute: the model's launch; sampler_launch: queuing the
sampling ops and their per-row inputs; sample: waiting for the step's tokens and appending
them; report: detokenize, stop checks, outputs, which with ``engine.async_output`` run while
the next step computes). On CUDA the captured graph is also replayed alone and timed with
events: its time is the model's share of a step. The rest of the step's wall time (``host_ms``)
is all that runs outside the graph: the sampling kernels and the input copies on the GPU and
host work the GPU waits for; the phase columns time the host's side. On CUDA a few more steps
run under torch.profiler for the device's side: per step, how long the GPU was busy and idle
(between the first and last kernel or copy of the window) and the kernels and copies outside
the model's groups (bench/decode_profile.py's ``group_of``: the sampler's, the input copies),
the costliest of which are printed. Writes step_breakdown-<gpu>.csv.
"""

from __future__ import annotations

import collections
import json
import statistics
import tempfile
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
           "frac_limit", "graph_frac_limit"] + [f"{p}_ms" for p in PHASES] + [
           "gpu_busy_ms", "gpu_idle_ms", "outside_model_ms"]  # fmt: skip
PROFILED_STEPS = 20
# trace event categories of device work
_DEVICE = ("kernel", "gpu_memcpy", "gpu_memset")


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


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: the time at least one of them runs."""
    busy, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi > end:
            busy += hi - max(lo, end)
            end = hi
    return busy


def device_timeline(engine: Engine, steps: int) -> tuple[float, float, dict[str, list[float]]]:
    """Run ``steps`` engine steps under torch.profiler: the GPU's busy and idle milliseconds per
    step over the window of its work, and {name: [calls, us]} per step of the kernels and
    copies outside the model's groups."""
    from torch.profiler import ProfilerActivity, profile

    from bench.decode_profile import group_of

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = [e for e in json.loads(path.read_text())["traceEvents"] if e.get("cat") in _DEVICE]
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in events]
    busy = busy_time(spans)
    window = max(hi for _, hi in spans) - min(lo for lo, _ in spans)
    outside: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for e in events:
        if e["cat"] != "kernel" or group_of(e["name"]) == "other":
            outside[e["name"]][0] += 1 / steps
            outside[e["name"]][1] += e["dur"] / steps
    return busy / steps / 1e3, (window - busy) / steps / 1e3, dict(outside)


def measure(engine: Engine, timers: _Timers, batch: int, prompt: int, steps: int, cfg, bw) -> dict:
    more = PROFILED_STEPS if engine.runner.graphs is not None else 0
    params = SamplingParams.from_defaults(
        cfg.sampling, max_tokens=steps + more + 1, ignore_eos=True
    )
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
    busy = idle = outside_ms = float("nan")
    if engine.runner.graphs is not None:  # CUDA: the device's side of a few more steps
        busy, idle, outside = device_timeline(engine, PROFILED_STEPS)
        outside_ms = sum(us for _, us in outside.values()) / 1e3
        print(f"batch {batch:3d}: GPU busy {busy:.3f} ms, idle {idle:.3f} ms per step; outside "
              f"the model's kernels {outside_ms * 1e3:.1f} us per step, the costliest:")  # fmt: skip
        for name, (calls, us) in sorted(outside.items(), key=lambda kv: -kv[1][1])[:12]:
            print(f"    {us:7.2f} us {calls:4.1f}x  {name[:100]}")
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
    row.update(gpu_busy_ms=busy, gpu_idle_ms=idle, outside_model_ms=outside_ms)
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
