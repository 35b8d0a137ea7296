"""The prefill path's dequantize (int4 -> fp16 [N, K], then cuBLAS) on the internlm-chat-20b
shapes (run on a CUDA GPU; needs torch and triton alone).

    PYTHONPATH=. python bench/dequant.py --out DIR

Times, in one run: the old dequantize (v1) and the tile kernel over candidate configs, each
checked bit-identical to the torch oracle first, against writing the fp16 weight alone (a floor
no dequantize can beat); then dequantize + ``F.linear`` at prefill sizes against cuBLAS alone.
Prints per-shape and per-layer us and the fraction of copy bandwidth (int4 + scales + zeros
read + fp16 written); writes dequant-<gpu>.csv under --out.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from bench.hardware import copy_bandwidth, gpu_slug
from bench.kernels import GROUP, SHAPES, awq_bytes, bench_ms
from plugins.awq import kernels as awq_kernels
from plugins.awq.reference import dequantize_kernel

# Prefill dequantize candidates (block_n, unroll = 128-wide K chunks per program, num_warps):
# 32 to 128 fp16 outputs per thread (2 to 8 16-byte stores); down's 108 chunks cap unroll at 4.
# On the H100 all of these were within 2% (0.89-0.91 of copy bandwidth); 1 row x 8 chunks was
# 8% slower and 64 x 4 chunks with 8 warps or 32 x 8 with 8 warps 20-35% slower (dropped).
DEQUANT_SWEEP = [(2, 4, 1), (2, 8, 1), (4, 4, 1), (4, 8, 2), (8, 2, 1), (8, 4, 1), (8, 4, 2),
                 (8, 8, 4), (16, 4, 4), (16, 8, 8), (32, 1, 4), (32, 2, 4), (32, 4, 8), (64, 2, 8)]  # fmt: skip
DEQUANT_MS = (256, 1024)


def random_awq(k: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random kernel-layout int4 weights on the GPU: qweight [N, K/8], scales, qzeros."""
    i32 = torch.iinfo(torch.int32)
    qweight = torch.randint(i32.min, i32.max, (n, k // 8), dtype=torch.int32, device="cuda")
    qzeros = torch.randint(i32.min, i32.max, (k // GROUP, n // 8), dtype=torch.int32, device="cuda")
    scales = torch.empty(k // GROUP, n, dtype=torch.float16, device="cuda").uniform_(1e-3, 1e-2)
    return qweight, scales, qzeros


def label(kind: str, cfg: awq_kernels.Config) -> str:
    return f"{kind} block_n={cfg.block_n} unroll={cfg.unroll} num_warps={cfg.num_warps}"


def run_dequant(bw: float, out: Path, slug: str) -> None:
    """Old (v1) vs tile dequantize per candidate config, then dequantize + cuBLAS at prefill M."""
    C = awq_kernels.Config
    impls = {"v1": ("v1", C("dequant", block_n=32))}  # v1 as the engine launched it
    d = awq_kernels.DEQUANT_CONFIG
    for bn, u, w in sorted({*DEQUANT_SWEEP, (d.block_n, d.unroll, d.num_warps)}):
        impls[f"tile-{bn}x{u}-w{w}"] = ("tile", C("dequant", block_n=bn, num_warps=w, unroll=u))
    default = f"tile-{d.block_n}x{d.unroll}-w{d.num_warps}"  # DEQUANT_CONFIG, the engine's choice
    shapes = {name: (k, sum(sizes)) for name, (k, sizes) in SHAPES.items()}
    nbytes = {name: awq_bytes(k, n) + n * k * 2 for name, (k, n) in shapes.items()}  # read + write
    rows = []  # (shape, impl, config, M, time_us, frac_bw)
    times: dict[str, dict[str, float]] = {impl: {} for impl in impls}
    fill = {}  # writing the fp16 weight alone (cudaMemset): a floor no dequantize can beat
    for name, (k, n) in shapes.items():
        qw, sc, qz = random_awq(k, n)
        ref = dequantize_kernel(qw, sc, qz, GROUP).half()  # the torch oracle; exact in fp16
        fill[name] = bench_ms(lambda w=torch.empty_like(ref): w.zero_(), 10, 50) * 1e3
        rows.append(
            (name, "fill", "fp16 W.zero_()", 0, fill[name], n * k * 2 / fill[name] * 1e6 / bw)
        )
        for impl, (kind, cfg) in impls.items():
            args = (qw, sc, qz, GROUP, cfg, kind)
            try:
                got = awq_kernels.awq_dequantize(*args)
                if not torch.equal(got.view(torch.int16), ref.view(torch.int16)):
                    raise AssertionError("not bit-identical to dequantize_kernel")
                del got
                t = bench_ms(lambda a=args: awq_kernels.awq_dequantize(*a), 10, 50) * 1e3
            except Exception as e:  # a config that fails to compile or mismatches: report, go on
                print(f"  {name} {impl}: {type(e).__name__}: {str(e)[:200]}")
                t = math.inf
            times[impl][name] = t
            rows.append((name, impl, label(kind, cfg), 0, t, nbytes[name] / (t * 1e-6) / bw))
        del ref
        torch.cuda.empty_cache()
    total_bytes = sum(nbytes.values())
    print(f"dequantize, us per shape (K x N) and per layer; frac_bw = (int4 + scales + zeros read "
          f"+ fp16 written) / time / {bw / 1e12:.2f} TB/s")  # fmt: skip
    print(f"{'impl':18s} " + " ".join(f"{n:>9s}" for n in shapes) + "     layer  frac_bw")
    for impl in impls:
        layer = sum(times[impl].values())
        rows.append(
            ("layer", impl, label(*impls[impl]), 0, layer, total_bytes / (layer * 1e-6) / bw)
        )
        print(f"{impl:18s} " + " ".join(f"{times[impl][n]:9.1f}" for n in shapes)
              + f" {layer:9.1f}  {rows[-1][5]:.3f}")  # fmt: skip
    layer = sum(fill.values())
    w_bytes = sum(n * k * 2 for k, n in shapes.values())
    rows.append(("layer", "fill", "fp16 W.zero_()", 0, layer, w_bytes / layer * 1e6 / bw))
    print(f"{'fill (W.zero_())':18s} " + " ".join(f"{fill[n]:9.1f}" for n in shapes)
          + f" {layer:9.1f}  {rows[-1][5]:.3f} (bytes written only)")  # fmt: skip
    tiles = [i for i in impls if i.startswith("tile")]
    best = min(tiles, key=lambda i: sum(times[i].values()))
    print(f"best tile config {best}: {sum(times[best].values()):.1f} us per layer; v1 "
          f"{sum(times['v1'].values()):.1f} us; DEQUANT_CONFIG ({default}) "
          f"{sum(times[default].values()):.1f} us")  # fmt: skip

    # dequantize + cuBLAS, the engine's prefill path, old vs best new; cuBLAS alone as the floor
    linear_us = {}
    compared = list(dict.fromkeys(("v1", best, default)))  # old, best new, the engine's choice
    for m in DEQUANT_MS:
        for impl in ["linear"] + [f"{i}+linear" for i in compared]:
            linear_us[(m, impl)] = 0.0
        for name, (k, n) in shapes.items():
            qw, sc, qz = random_awq(k, n)
            w16 = torch.randn(n, k, device="cuda", dtype=torch.float16)
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            fns = {"linear": lambda x=x, w=w16: F.linear(x, w)}
            for impl in compared:
                kind, cfg = impls[impl]
                fns[f"{impl}+linear"] = lambda x=x, a=(qw, sc, qz, GROUP, cfg, kind): F.linear(
                    x, awq_kernels.awq_dequantize(*a)
                )
            for impl, fn in fns.items():
                t = bench_ms(fn, 10, 50) * 1e3
                linear_us[(m, impl)] += t
                rows.append((name, impl, "", m, t, math.nan))
            del w16
            torch.cuda.empty_cache()
        print(f"M={m:5d} per layer: " + "  ".join(
            f"{impl} {t:.1f} us" for (mm, impl), t in linear_us.items() if mm == m))  # fmt: skip
        for (mm, impl), t in linear_us.items():
            if mm == m:
                rows.append(("layer", impl, "", m, t, math.nan))
    with open(out / f"dequant-{slug}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["shape", "impl", "config", "M", "time_us", "frac_bw"])
        w.writerows([(*r[:4], f"{r[4]:.2f}", f"{r[5]:.3f}") for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    assert torch.cuda.is_available(), "bench/dequant.py needs a CUDA GPU"
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    print(f"GPU {gpu} | torch {torch.__version__} | triton {triton.__version__} | "
          f"copy bandwidth {bw / 1e12:.3f} TB/s (read + write, 1 GiB)")  # fmt: skip
    run_dequant(bw, args.out, gpu_slug(gpu))


if __name__ == "__main__":
    main()
