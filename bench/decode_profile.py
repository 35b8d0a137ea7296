"""nybble-bench task=decode_profile: which kernels one decode step's CUDA graph spends its time in.

For each concurrency B: B requests of ``token_pairs[0] = [prompt, steps]`` prompt tokens are
prefilled and decoded for ``steps`` steps (so the context is ``prompt + steps``); then the decode
graph for B rows is replayed under torch.profiler, and the device time of every kernel inside it
is summed by kernel name and divided by the replays: microseconds per step, calls per step, and
the share of the graph. Kernels fall into groups (AWQ GEMM, attention, norms, ...) by name, so
the table says where the step goes and what a fusion or a faster kernel could save. CUDA only.
Writes decode_profile-<gpu>.csv (one row per batch and kernel) and prints the groups.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import torch

from bench.graph_timing import median_replay_ms
from bench.hardware import gpu_name, gpu_slug, versions
from bench.sweep import write_csv
from core.engine import Engine
from core.sampling_params import SamplingParams

COLUMNS = ["batch", "context", "group", "kernel", "calls_per_step", "us_per_step", "share",
           "graph_ms"]  # fmt: skip

# kernel-name fragment -> group, first match wins
GROUPS = (
    ("_awq_", "awq_gemm"),
    ("_decode_", "attention"),  # the split kernel (and the reduce kernel, unfused)
    ("_prefill_kernel", "attention"),
    ("attn", "attention"),
    ("norm", "norm"),
    ("rotary", "rotary"),
    ("_store_kv", "kv_store"),
    ("silu", "silu_mul"),
    ("nvjet", "lm_head"),  # cuBLAS's Hopper GEMMs: the fp16 lm_head
    ("gemm", "lm_head"),
    ("gemv", "lm_head"),
    ("FillFunctor", "memset"),  # zeroed outputs of the fp16-atomic split-K GEMMs
    ("indexSelect", "embedding"),
)


def group_of(kernel: str) -> str:
    low = kernel.lower()
    return next((g for frag, g in GROUPS if frag.lower() in low), "other")


def profile_graph(graph: torch.cuda.CUDAGraph, replays: int) -> dict[str, tuple[int, float]]:
    """kernel name -> (calls, total device microseconds) over ``replays`` replays."""
    from torch.profiler import ProfilerActivity, profile

    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    acc: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            acc[evt.name][0] += 1
            acc[evt.name][1] += evt.device_time_total
    return {k: (v[0], v[1]) for k, v in acc.items()}


def decode_to_context(
    engine: Engine, batch: int, prompt: int, steps: int, params: SamplingParams, seed: int
) -> torch.cuda.CUDAGraph:
    """Start ``batch`` random ``prompt``-token requests and decode ``steps`` steps; the decode
    graph that ran last (replaying it repeats that step: same context, same kernels). The
    requests are left running (``params.max_tokens`` > steps): step the engine to finish them."""
    rng = np.random.default_rng([seed, batch])
    vocab = engine.model_config.vocab_size
    for i in range(batch):
        engine.add_request(rng.integers(3, min(vocab, 100_000), prompt).tolist(), params, f"p{i}")
    for _ in range(steps + 1):  # prefill, then decode up to the context
        engine.step()
    graphs = engine.runner.graphs
    return graphs.graphs[next(s for s in graphs.sizes if s >= batch)]


def measure(engine: Engine, batch: int, prompt: int, steps: int, cfg, replays: int) -> list[dict]:
    params = SamplingParams.from_defaults(cfg.sampling, max_tokens=steps + 2, ignore_eos=True)
    graph = decode_to_context(engine, batch, prompt, steps, params, cfg.seed)
    graph_ms = median_replay_ms(graph, 50)
    kernels = profile_graph(graph, replays)
    while engine.has_unfinished():
        engine.step()
    rows = []
    total = sum(us for _, us in kernels.values())
    for name, (calls, us) in sorted(kernels.items(), key=lambda kv: -kv[1][1]):
        rows.append({"batch": batch, "context": prompt + steps, "group": group_of(name),
                     "kernel": name, "calls_per_step": calls / replays,
                     "us_per_step": us / replays, "share": us / total,
                     "graph_ms": graph_ms})  # fmt: skip
    return rows


def run(cfg) -> list[dict]:
    if not torch.cuda.is_available() or cfg.engine.device == "cpu":
        raise SystemExit("decode_profile profiles the decode CUDA graph: it needs a CUDA GPU")
    name, out_dir = gpu_name(), Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{name} | {versions()}")
    if not cfg.engine.cuda_graphs:
        raise SystemExit(
            "decode_profile profiles the decode CUDA graphs: set engine.cuda_graphs=true"
        )
    cfg.engine.max_batch_size = max(cfg.engine.max_batch_size, max(cfg.concurrency))
    engine = Engine(cfg)
    prompt, steps = (int(v) for v in cfg.token_pairs[0])
    rows = []
    for b in cfg.concurrency:
        got = measure(engine, b, prompt, steps, cfg, replays=20)
        rows += got
        groups: dict[str, list] = collections.defaultdict(lambda: [0.0, 0.0])
        for r in got:
            groups[r["group"]][0] += r["us_per_step"]
            groups[r["group"]][1] += r["calls_per_step"]
        kern_ms = sum(g[0] for g in groups.values()) / 1e3
        print(f"batch {b} context {prompt + steps}: graph {got[0]['graph_ms']:.2f} ms replayed, "
              f"kernels {kern_ms:.2f} ms summed")  # fmt: skip
        for g, (us, calls) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
            print(f"  {g:12s} {us / 1e3:7.3f} ms  {calls:6.0f} launches  "
                  f"{us / calls if calls else 0:7.2f} us each")  # fmt: skip
        for r in got[:12]:
            print(f"    {r['us_per_step']:8.1f} us {r['calls_per_step']:5.0f}x  {r['kernel'][:90]}")
    path = out_dir / f"decode_profile-{gpu_slug(name)}.csv"
    write_csv(rows, COLUMNS, path)
    print(f"wrote {path}")
    return rows
