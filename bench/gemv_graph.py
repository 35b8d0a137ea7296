"""Decode W4A16 configs timed as the engine runs them: inside CUDA graphs, L2-cold weights.

    PYTHONPATH=. python bench/gemv_graph.py [--out bench/results] [--ms 1,2,4,16] [--partial]

``bench/kernels.py`` times one launch at a time with ``do_bench`` (host launch cost included,
tens of microseconds against 20-40 us kernels, and noisy). Here each candidate config runs over
COPIES distinct random weight sets of one internlm-chat-20b shape, captured in one CUDA graph
(no launch gaps; the copies together exceed L2, so every launch reads its weights from memory),
and the replay time / COPIES is the per-layer time. Every config is first checked against the
fp32 reference on fresh random x. Writes gemv-graph-<gpu>.csv and prints the best per shape.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from bench.graph_timing import median_replay_ms
from bench.hardware import copy_bandwidth, gpu_slug, versions
from bench.kernels import GROUP, SHAPES, awq_bytes, make_awq_layer
from bench.sweep import write_csv
from core.partial_sums import total
from plugins.awq import kernels as awq_kernels
from plugins.awq.gemv import gemv_block_m
from plugins.awq.mma_gemv import MMA_DECODE_MAX_M
from plugins.awq.reference import dequantize_kernel

COPIES = 8
REPLAYS = 30
C = awq_kernels.Config
# (block_n, unroll, num_warps, split_k) for the CUDA-core GEMV; each with and without prefetch
GEMV = [(4, 4, 1, 1), (8, 4, 1, 1), (8, 8, 1, 1), (16, 4, 1, 1), (16, 4, 2, 1), (16, 4, 4, 1),
        (32, 4, 4, 1), (8, 4, 2, 1), (4, 8, 1, 2), (8, 4, 1, 2), (16, 4, 2, 2), (8, 2, 1, 1),
        (16, 8, 4, 1), (32, 2, 4, 1)]  # fmt: skip

# (block_n, num_warps, num_stages, unroll, split_k) for the tensor-core decode paths
DOT = [(64, 2, 3, 2, 4), (64, 1, 3, 2, 4), (32, 2, 3, 2, 4), (128, 4, 3, 2, 4), (64, 2, 3, 2, 8),
       (64, 2, 2, 2, 4), (64, 4, 3, 2, 4), (32, 1, 3, 2, 8), (128, 2, 3, 2, 4), (64, 2, 4, 1, 4),
       (32, 4, 4, 2, 4), (64, 4, 4, 1, 1)]  # fmt: skip
# more programs for the tensor-core paths: ncu on an H200 found them latency-bound with 1.2 to
# 2.7 warps per scheduler (bench/results/ncu-decode-gemm-h200.md); splits that divide the 40
# (K=5120) or 108 (K=13824) chunks, each with (block_n, num_warps, num_stages, unroll)
MORE_SPLITS = {5120: (10, 20), 13824: (6, 9, 12, 18)}
MORE_TILES = [(64, 2, 3, 1), (32, 2, 3, 1), (32, 1, 3, 1), (64, 4, 3, 1)]
# tensor-core GEMV (plugins/awq/mma_gemv.py): (16-row tiles per program, warps), split-K per K
# (40 chunks at K=5120, 108 at K=13824), and (prefetch, unroll): 1, 2 or 4 chunks' loads issued
# per iteration, with the next iteration's loads issued before this one's math or not. The
# session-6 sweep (gemv-graph-h200-mma.csv) also had (4, 1) and (8, 4): never best by more than
# 3%. (8, 2) is M=16's qkv and gate_up default, which also beat the M=32 sweep's per-shape best
# without it in the decode graph (bench/results/README.md, session 14).
MMA_TILES = ((1, 1), (2, 2), (4, 4), (2, 1), (4, 2), (8, 2))
MMA_SPLITS = {5120: (1, 2, 4, 8), 13824: (2, 3, 6, 9)}
MMA_LOADS = ((True, 1), (True, 2), (True, 4), (False, 2))


def mma_candidates(m: int, k: int) -> list[awq_kernels.Config]:
    if m > MMA_DECODE_MAX_M:
        return []
    return [C("mma", block_n=16 * t, num_warps=w, split_k=sk, prefetch=pf, unroll=u)
            for t, w in MMA_TILES for sk in MMA_SPLITS.get(k, (1, 2, 4)) for pf, u in MMA_LOADS]  # fmt: skip


def candidates(m: int, n: int, k: int, paths: str = "all") -> list[awq_kernels.Config]:
    default = awq_kernels.default_config(m, n, k)
    if paths == "mma":  # the tensor-core GEMV against today's choice and the non-mma path's
        cfgs = [default]
        for c in [awq_kernels.default_config(m, n, k, mma=False), *mma_candidates(m, k)]:
            if c not in cfgs:
                cfgs.append(c)
        return cfgs
    if paths == "default":
        return [default]
    if m > awq_kernels.GEMV_MAX_M:
        bm = 16 if m <= 16 else 32 if m <= 32 else 64
        cfgs = [default]
        for p in ("dot_t", "dot"):
            for bn, w, st, u, sk in DOT:
                cfg = C(p, bm, bn, num_warps=w, num_stages=st, unroll=u, split_k=sk)
                if cfg not in cfgs:
                    cfgs.append(cfg)
            for sk in MORE_SPLITS.get(k, ()) if p == "dot_t" else ():  # dot within 5% of dot_t
                for bn, w, st, u in MORE_TILES:
                    cfg = C(p, bm, bn, num_warps=w, num_stages=st, unroll=u, split_k=sk)
                    if cfg not in cfgs:
                        cfgs.append(cfg)
        return cfgs + [c for c in mma_candidates(m, k) if c not in cfgs]
    block_m = gemv_block_m(m)
    cfgs = [default, C("gemv", 1, default.block_n, num_warps=default.num_warps,
                       unroll=default.unroll, split_k=default.split_k, prefetch=True)]  # fmt: skip
    for bn, u, w, sk in GEMV:
        if bn * u * 16 // (32 * w) * block_m > 64:  # accumulator registers per thread
            continue
        for pf in (False, True):
            cfg = C("gemv", 1, bn, num_warps=w, unroll=u, split_k=sk, prefetch=pf)
            if cfg not in cfgs:
                cfgs.append(cfg)
    return cfgs + [c for c in mma_candidates(m, k) if c not in cfgs]


def graph_time_us(fn) -> float:
    """Median per-call time of ``fn`` (which runs COPIES launches) replayed as a CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # compile / warm up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(3):
        g.replay()
    return median_replay_ms(g, REPLAYS) * 1e3 / COPIES


def config_time_us(
    cfg: awq_kernels.Config, x: torch.Tensor, layers: list, partial: bool = False
) -> float:
    """Per-layer time of ``cfg`` over ``layers`` (distinct weights of one shape) in a CUDA graph.
    ``partial``: split-K launches leave their partial sums unadded (kernels.split_k_sum=consumer;
    the op that would add them is not timed)."""

    def run():
        for lay in layers:
            awq_kernels.awq_gemm(
                x, lay.qweight, lay.scales, lay.qzeros, GROUP, config=cfg, partial=partial
            )

    return graph_time_us(run)


def announce() -> tuple[str, float]:
    """Print and return the GPU's name and its copy bandwidth (bytes/s), measured now."""
    gpu = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    print(f"GPU {gpu} | {versions()} | copy bandwidth {bw / 1e12:.3f} TB/s", flush=True)
    return gpu, bw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--ms", type=str, default="1,2,4,16")
    parser.add_argument("--paths", choices=("all", "mma", "default"), default="all",
                        help="mma: only the tensor-core GEMV against the default config; "
                             "default: the default config alone")  # fmt: skip
    parser.add_argument("--partial", action="store_true",
                        help="split-K launches store their partial sums and exit, as with "
                             "kernels.split_k_sum=consumer (the adding op is not timed)")  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    gpu, bw = announce()
    csv_path = args.out / f"gemv-graph-{gpu_slug(gpu)}{'-partial' if args.partial else ''}.csv"
    rows = []
    for name, (k, sizes) in SHAPES.items():
        layers = [make_awq_layer(k, sizes) for _ in range(COPIES)]
        n = layers[0].output_size
        nbytes = awq_bytes(k, n)
        w = dequantize_kernel(layers[0].qweight, layers[0].scales, layers[0].qzeros, GROUP)
        for m in [int(v) for v in args.ms.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ref = x.float() @ w.float().t()
            for cfg in candidates(m, n, k, args.paths):
                try:
                    y = total(awq_kernels.awq_gemm(
                        x, layers[0].qweight, layers[0].scales, layers[0].qzeros, GROUP,
                        config=cfg, partial=args.partial,
                    ))  # fmt: skip
                    err = ((y.float() - ref).norm() / ref.norm()).item()
                    if not err < 2e-3:
                        raise AssertionError(f"rel err {err:.2e}")
                    t = config_time_us(cfg, x, layers, args.partial)
                except Exception as e:  # keep sweeping; the row records the failure
                    print(f"  {name} M={m} {cfg}: {type(e).__name__}: {str(e)[:160]}", flush=True)
                    t, err = math.inf, math.nan
                is_default = cfg == awq_kernels.default_config(m, n, k)
                rows.append(dict(shape=name, M=m, config=repr(cfg), default=is_default,
                                 time_us=t, frac_bw=nbytes / (t * 1e-6) / bw, rel_err=err))  # fmt: skip
            sel = [r for r in rows if r["shape"] == name and r["M"] == m]
            best = min(sel, key=lambda r: r["time_us"])
            dflt = next(r for r in sel if r["default"])
            print(f"{name:8s} M={m:3d} default {dflt['time_us']:7.1f} us ({dflt['frac_bw']:.2f}) "
                  f"best {best['time_us']:7.1f} us ({best['frac_bw']:.2f}) {best['config']}",
                  flush=True)  # fmt: skip
        del layers, w
        torch.cuda.empty_cache()
        write_csv(rows, list(rows[0]), csv_path)  # after every shape: a cut-off sweep keeps them
    print(f"\nlayers60 (4 shapes x 60), {gpu}, copy bw {bw / 1e12:.3f} TB/s")
    total_bytes = sum(awq_bytes(k, sum(s)) for k, s in SHAPES.values())
    for m in sorted({r["M"] for r in rows}):
        sel = [r for r in rows if r["M"] == m]
        d = sum(r["time_us"] for r in sel if r["default"])
        b = sum(min(r["time_us"] for r in sel if r["shape"] == s) for s in SHAPES)
        print(f"M={m:3d}: default {d * 60 / 1e3:6.2f} ms (frac {total_bytes / (d * 1e-6) / bw:.2f})"
              f" | best per shape {b * 60 / 1e3:6.2f} ms (frac {total_bytes / (b * 1e-6) / bw:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
