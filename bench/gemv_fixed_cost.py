"""How much of a decode GEMV launch is fixed cost and how much is streaming weights.

    PYTHONPATH=. python bench/gemv_fixed_cost.py [--out bench/results] [--ms 1,16]

For each internlm-chat-20b shape and M, the default launch config of the real shape is timed
(CUDA graphs of COPIES launches over distinct weights, as bench/gemv_graph.py does) at the real
N and several K (fewer weight bytes, same grid of row blocks and splits), and a least-squares
line time = fixed + bytes / rate is fitted: ``fixed_us`` is what a launch costs whatever its
size (launch, first loads, the split-K tail), ``rate`` the bandwidth it streams at in between.
Per 60 layers the four fixed parts are what more loads in flight cannot remove. Writes
gemv-fixed-cost-<gpu>.csv (one row per shape, M and K, with the fit repeated on each row).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.gemv_graph import COPIES, announce, config_time_us
from bench.hardware import gpu_slug
from bench.kernels import LAYERS, SHAPES, awq_bytes, make_awq_layer
from bench.sweep import write_csv
from plugins.awq import kernels as awq_kernels

# K as fractions of the real one, in 128-wide chunks that every default split count divides
K_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys against xs (at least two distinct xs)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        raise ValueError("fit_line needs at least two distinct x values")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope


def fit_launch(nbytes: list[float], times_us: list[float]) -> tuple[float, float]:
    """(fixed microseconds per launch, streaming rate in bytes per second) of timings at sizes."""
    fixed, slope = fit_line(nbytes, times_us)  # slope: microseconds per byte
    return fixed, (1e6 / slope if slope > 0 else float("inf"))


def k_values(k: int, split_k: int) -> list[int]:
    """K values below the real one: multiples of 128 x split_k (each split keeps whole chunks)."""
    step = 128 * max(1, split_k)
    return sorted({max(step, round(k * f / step) * step) for f in K_FRACTIONS} | {k})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--ms", type=str, default="1,16")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    gpu, bw = announce()
    rows, fixed_total = [], {}
    for name, (k_real, sizes) in SHAPES.items():
        n = sum(sizes)
        for m in [int(v) for v in args.ms.split(",")]:
            cfg = awq_kernels.default_config(m, n, k_real)
            points = []
            for k in k_values(k_real, cfg.split_k):
                layers = [make_awq_layer(k, sizes) for _ in range(COPIES)]
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                points.append((k, awq_bytes(k, n), config_time_us(cfg, x, layers)))
                del layers
                torch.cuda.empty_cache()
            fixed, rate = fit_launch([p[1] for p in points], [p[2] for p in points])
            fixed_total[m] = fixed_total.get(m, 0.0) + fixed
            for k, nbytes, t in points:
                rows.append(dict(shape=name, M=m, K=k, config=repr(cfg), bytes=nbytes, time_us=t,
                                 fixed_us=fixed, rate_tbs=rate / 1e12,
                                 rate_frac_bw=rate / bw))  # fmt: skip
            print(f"{name:8s} M={m:3d} fixed {fixed:5.1f} us + bytes at {rate / 1e12:.2f} TB/s "
                  f"({rate / bw:.2f} of copy bandwidth); " + ", ".join(
                      f"K={k} {t:.1f} us" for k, _, t in points), flush=True)  # fmt: skip
    for m, fixed in fixed_total.items():
        print(
            f"M={m}: fixed parts of the four shapes x {LAYERS} layers = {fixed * LAYERS / 1e3:.2f} ms"
        )
    write_csv(rows, list(rows[0]), args.out / f"gemv-fixed-cost-{gpu_slug(gpu)}.csv")


if __name__ == "__main__":
    main()
