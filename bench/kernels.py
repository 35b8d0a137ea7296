"""W4A16 kernel benchmark on the internlm-chat-20b linear shapes (run on a CUDA GPU).

    PYTHONPATH=. python bench/kernels.py [--out bench/results] [--sweep]

Measures, in one run: device-to-device copy bandwidth (bytes read + written), fp16 cuBLAS
``F.linear``, torch's int4 tinygemm (``_weight_int4pack_mm``) and nybble's AWQ kernels through
the model's path (``core.layers.linear.Linear`` -> ``AWQLinearMethod.apply`` -> ``awq_gemm``).
Times are ``triton.testing.do_bench`` medians (L2 flushed between runs). Weights are random:
speed does not depend on their values. Writes kernels-<gpu>.csv/.png/.md under --out;
``--sweep`` also times candidate launch configurations (kernels-sweep-<gpu>.csv).
The prefill dequantize alone has its own script, bench/dequant.py.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from bench.hardware import copy_bandwidth, gpu_slug
from plugins.awq import kernels as awq_kernels
from plugins.awq.gemv import GEMV_MAX_BLOCK_M
from plugins.awq.reference import dequantize_kernel

if TYPE_CHECKING:  # the engine needs more than torch; bench/dequant.py imports this without it
    from core.layers.linear import Linear

GROUP = 128
LAYERS = 60
# name -> (in_features K, fused output sizes)
SHAPES = {
    "qkv": (5120, [5120, 5120, 5120]),
    "o": (5120, [5120]),
    "gate_up": (5120, [13824, 13824]),
    "down": (13824, [5120]),
}
MS = (1, 2, 4, 8, 16, 32, 64, 256, 1024, 4096)
TARGETS = {1: 0.80, 16: 0.70}  # layers60 fraction of copy bandwidth; M >= 256: <= 1.2x fp16


def bench_ms(fn, warmup: int = 25, rep: int = 100) -> float:
    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def awq_bytes(k: int, n: int) -> int:
    return (
        k * n // 2 + (k // GROUP) * n * 2 + (k // GROUP) * n // 2
    )  # int4 + fp16 scales + int4 zeros


def make_awq_layer(k: int, sizes: list[int]) -> Linear:
    """A Linear built like the model's, random AWQ tensors loaded, repacked for the kernel."""
    from core.layers.linear import Linear
    from plugins.awq.format import AWQLinearMethod
    from plugins.awq.plugin import awq_gemm_triton

    with torch.device("cuda"):
        layer = Linear(k, sizes, False, AWQLinearMethod(GROUP, gemm=awq_gemm_triton), torch.float16)
    i32 = torch.iinfo(torch.int32)
    layer.qweight.data.random_(i32.min, i32.max)
    layer.qzeros.data.random_(i32.min, i32.max)
    layer.scales.data.uniform_(1e-3, 1e-2)
    layer.linear_method.process_weights_after_loading(layer)
    return layer


class TinyGemm:
    """torch's int4 tinygemm for [N, K] weights, resolving its API at run time."""

    def __init__(self, k: int, n: int) -> None:
        self.k, self.n, self.error, self.api = k, n, None, None
        self.bytes = k * n // 2 + (k // GROUP) * n * 2 * 2  # int4 + bf16 scales and zeros
        try:
            convert = torch.ops.aten._convert_weight_to_int4pack
            self.api = (
                f"{convert.default._schema} / {torch.ops.aten._weight_int4pack_mm.default._schema}"
            )
            try:  # torch >= 2.5: uint8 [N, K/2]
                w = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda")
                self.w = convert(w, 8)
            except RuntimeError:  # older: int32 [N, K] values 0..15
                w = torch.randint(0, 16, (n, k), dtype=torch.int32, device="cuda")
                self.w = convert(w, 8)
            self.sz = torch.rand(k // GROUP, n, 2, device="cuda").to(torch.bfloat16)
            self(torch.randn(1, k, device="cuda"))
        except Exception as e:  # record why, keep benchmarking the others
            self.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm(x.to(torch.bfloat16), self.w, GROUP, self.sz)


# GEMV candidates (block_n, unroll, num_warps, split_k); a thread holds block_n * unroll * 16 /
# (32 * num_warps) int32 and one fp32 accumulator per int32 and x row (kept <= 64 registers).
GEMV_SWEEP = [(4, 4, 1, 1), (8, 4, 1, 1), (8, 8, 1, 1), (16, 4, 1, 1), (16, 4, 2, 1), (16, 8, 2, 1),
              (32, 4, 4, 1), (32, 2, 2, 1), (64, 4, 4, 1), (8, 4, 1, 2), (16, 4, 2, 2), (4, 8, 1, 2),
              (8, 2, 1, 1), (16, 2, 2, 1), (16, 4, 4, 1), (32, 2, 4, 1), (8, 4, 2, 1)]  # fmt: skip


def gemv_configs(m: int) -> list[awq_kernels.Config]:
    block_m = min(GEMV_MAX_BLOCK_M, triton.next_power_of_2(m))
    return [awq_kernels.Config("gemv", 1, bn, num_warps=w, unroll=u, split_k=sk)
            for bn, u, w, sk in GEMV_SWEEP if bn * u * 16 // (32 * w) * block_m <= 64]  # fmt: skip


def sweep_configs(m: int) -> list[awq_kernels.Config]:
    C = awq_kernels.Config
    if m <= 64:
        legacy = [C("fma", 1, 16, unroll=4, split_k=2), C("fma", 1, 64, unroll=2, split_k=2)]
        if m > 1:
            legacy = [C("dot", 16, 64, unroll=2, split_k=2), C("dot_t", 32 if m <= 32 else 64, 64,
                      num_stages=4), C("dot_t", 32 if m <= 32 else 64, 32, split_k=2)]  # fmt: skip
        return gemv_configs(m) + legacy
    if m == 1:
        fma = [(16, 4, 4, 1), (16, 4, 2, 1), (16, 2, 4, 1), (8, 2, 4, 1), (32, 4, 4, 1), (32, 2, 4, 1),
               (32, 4, 2, 2), (64, 4, 2, 2), (16, 4, 4, 2), (16, 4, 2, 4)]  # fmt: skip
        cfgs = [C("fma", 1, bn, num_warps=w, unroll=u, split_k=sk) for bn, w, u, sk in fma]
        return cfgs + [C(p, 16, bn, num_warps=4, num_stages=st, unroll=u, split_k=sk)
                       for p in ("dot", "dot_t")
                       for bn, st, u, sk in ((16, 3, 2, 1), (32, 3, 2, 1), (32, 4, 1, 2), (64, 4, 2, 1))]  # fmt: skip
    if m <= 64:
        bm = min(64, max(16, triton.next_power_of_2(m)))
        return [C(p, bm, bn, num_warps=w, num_stages=st, unroll=u, split_k=sk)
                for p in ("dot", "dot_t")
                for bn, w, st, u, sk in ((16, 4, 3, 2, 1), (32, 4, 3, 2, 1), (32, 4, 4, 1, 1),
                                         (64, 4, 4, 1, 1), (32, 4, 3, 1, 2), (64, 4, 3, 2, 2))]  # fmt: skip
    return [C("dot", 64, 128, num_warps=4, num_stages=3), C("dot", 128, 128, num_warps=8, num_stages=3),
            C("dot", 128, 64, num_warps=4, num_stages=4), C("dot", 64, 64, num_warps=4, num_stages=4),
            C("dot", 128, 256, num_warps=8, num_stages=3), C("dot_t", 64, 128, num_warps=4, num_stages=3),
            C("dequant", block_n=32)]  # fmt: skip


def run_sweep(layers: dict[str, Linear], bw: float, out: Path, slug: str, ms) -> None:
    rows = []
    refs = {}  # fresh random x per (M, shape), its fp32 reference: every config is checked
    for m in ms:
        best: dict[str, tuple[float, str]] = {}
        totals: dict[str, float] = {}
        for cfg in sweep_configs(m):
            total = 0.0
            for name, layer in layers.items():
                if (m, name) not in refs:
                    x = torch.randn(m, layer.input_size, device="cuda", dtype=torch.float16)
                    w = dequantize_kernel(layer.qweight, layer.scales, layer.qzeros, GROUP)
                    refs[(m, name)] = (x, x.float() @ w.t())
                    del w
                x, ref = refs[(m, name)]
                args = (x, layer.qweight, layer.scales, layer.qzeros, GROUP)
                try:
                    y = awq_kernels.awq_gemm(*args, config=cfg)
                    err = ((y.float() - ref).norm() / ref.norm()).item()
                    if not err < 2e-3:
                        raise AssertionError(f"rel err {err:.2e} vs the reference")
                    t = bench_ms(lambda a=args, c=cfg: awq_kernels.awq_gemm(*a, config=c), 10, 40)
                except Exception as e:
                    print(f"  M={m} {name} {cfg}: {type(e).__name__}: {str(e)[:200]}")
                    t = math.inf
                total += t
                rows.append((m, name, repr(cfg), t * 1e3))
                if t < best.get(name, (math.inf, ""))[0]:
                    best[name] = (t, repr(cfg))
            totals[repr(cfg)] = total
        top = min(totals, key=totals.get)
        wbytes = sum(awq_bytes(layer.input_size, layer.output_size) for layer in layers.values())
        print(f"sweep M={m}: best single config {top}: {totals[top] * 1e3:.1f} us per 4 shapes, "
              f"frac_bw {wbytes / (totals[top] * 1e-3) / bw:.3f}")  # fmt: skip
        for name, (t, c) in best.items():
            print(f"    {name:8s} {t * 1e3:8.1f} us  {c}")
    with open(out / f"kernels-sweep-{slug}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["M", "shape", "config", "time_us"])
        w.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--sweep", action="store_true", help="also time candidate configs")
    parser.add_argument("--ms", type=str, default=",".join(map(str, MS)))
    parser.add_argument("--sweep-ms", type=str, default="1,4,16,64,256,1024,4096")
    parser.add_argument("--sweep-only", action="store_true", help="skip the full table")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    assert torch.cuda.is_available(), "bench/kernels.py needs a CUDA GPU"
    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name()
    slug = gpu_slug(gpu)
    bw = copy_bandwidth()
    print(f"GPU {gpu} | torch {torch.__version__} | triton {triton.__version__} | "
          f"copy bandwidth {bw / 1e12:.3f} TB/s (read + write, 1 GiB)")  # fmt: skip
    layers = {name: make_awq_layer(k, sizes) for name, (k, sizes) in SHAPES.items()}
    if args.sweep or args.sweep_only:
        run_sweep(layers, bw, args.out, slug, [int(v) for v in args.sweep_ms.split(",")])
        if args.sweep_only:
            return
    ms = [int(v) for v in args.ms.split(",")]
    rows: list[dict] = []
    tiny_status = None
    for name, layer in layers.items():
        k, n = layer.input_size, layer.output_size
        w16 = torch.randn(n, k, device="cuda", dtype=torch.float16)
        tiny = TinyGemm(k, n)
        if tiny_status is None:
            print(
                f"tinygemm API: {tiny.api}" + (f" | cannot run: {tiny.error}" if tiny.error else "")
            )
            tiny_status = (tiny.api, tiny.error)
        impls = {
            "nybble": (layer, awq_bytes(k, n)),
            "fp16": (lambda x, w=w16: F.linear(x, w), k * n * 2),
        }
        if tiny.error is None:
            impls["tinygemm"] = (tiny, tiny.bytes)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            for impl, (fn, nbytes) in impls.items():
                t = bench_ms(lambda f=fn, x=x: f(x)) * 1e-3  # seconds
                rows.append(dict(shape=name, M=m, impl=impl, time_us=t * 1e6, bytes=nbytes))
            print(f"{name:8s} M={m:5d} " + " ".join(
                f"{r['impl']}={r['time_us']:9.1f}us" for r in rows[-len(impls):]))  # fmt: skip
        del w16, tiny
        torch.cuda.empty_cache()

    for m in ms:
        for impl in ("nybble", "fp16", "tinygemm"):
            sel = [r for r in rows if r["M"] == m and r["impl"] == impl]
            if len(sel) == len(SHAPES):
                rows.append(dict(shape="layers60", M=m, impl=impl,
                                 time_us=LAYERS * sum(r["time_us"] for r in sel),
                                 bytes=LAYERS * sum(r["bytes"] for r in sel)))  # fmt: skip
    for r in rows:
        r["gbps"] = r["bytes"] / (r["time_us"] * 1e-6) / 1e9
        r["frac_bw"] = r["gbps"] * 1e9 / bw
    write_outputs(rows, args.out, slug, gpu, bw, ms, tiny_status)


def write_outputs(rows, out: Path, slug: str, gpu: str, bw: float, ms, tiny_status) -> None:
    path = out / f"kernels-{slug}.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["shape", "M", "impl", "time_us", "gbps", "frac_bw"])
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    k: (f"{v:.4g}" if isinstance(v, float) else v)
                    for k, v in r.items()
                    if k != "bytes"
                }
            )
    l60 = {(r["impl"], r["M"]): r for r in rows if r["shape"] == "layers60"}

    lines = [
        f"# W4A16 kernels on {gpu}",
        "",
        f"torch {torch.__version__}, triton {triton.__version__}, copy bandwidth {bw / 1e12:.3f} TB/s "
        "(1 GiB device-to-device copy, bytes read + written). `python bench/kernels.py`; "
        "do_bench medians, L2 flushed; random internlm-chat-20b-shaped weights, AWQ g128.",
        "",
        "layers60 = 60 x (qkv 5120->15360, o 5120->5120, gate_up 5120->27648, down 13824->5120). "
        "frac_bw = each impl's weight bytes (nybble: int4 + fp16 scales + int4 zeros; tinygemm: "
        "int4 + bf16 scales and zeros; fp16: fp16) / time / copy bandwidth.",
        "",
        "| M | nybble ms | frac_bw | fp16 ms | tinygemm ms | nybble / fp16 |",
        "|---|---|---|---|---|---|",
    ]
    for m in ms:
        a, f16, tg = l60.get(("nybble", m)), l60.get(("fp16", m)), l60.get(("tinygemm", m))
        lines.append(
            f"| {m} | {a['time_us'] / 1e3:.2f} | {a['frac_bw']:.2f} | {f16['time_us'] / 1e3:.2f} | "
            + (f"{tg['time_us'] / 1e3:.2f}" if tg else "n/a")
            + f" | {a['time_us'] / f16['time_us']:.2f} |"
        )
    lines += ["", "Targets:"]
    for m, target in TARGETS.items():
        if ("nybble", m) in l60:
            got = l60[("nybble", m)]["frac_bw"]
            lines.append(
                f"- M={m}: frac_bw {got:.2f} vs target {target:.2f}: {'met' if got >= target else 'NOT met'}"
            )
    for m in [m for m in ms if m >= 256]:
        ratio = l60[("nybble", m)]["time_us"] / l60[("fp16", m)]["time_us"]
        lines.append(
            f"- M={m}: {ratio:.2f}x fp16 time vs target <= 1.20x: {'met' if ratio <= 1.2 else 'NOT met'}"
        )
    api, error = tiny_status
    if error:
        lines.append(f"- tinygemm could not run: {error} (API found: {api})")
    else:
        lines.append(f"- tinygemm API used: {api} (bf16 activations)")
    (out / f"kernels-{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"no PNG: {e}", file=sys.stderr)
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for impl in ("nybble", "fp16", "tinygemm"):
        pts = [(m, l60[(impl, m)]) for m in ms if (impl, m) in l60]
        if pts:
            ax1.plot([m for m, _ in pts], [r["time_us"] / 1e3 for _, r in pts], "o-", label=impl)
            ax2.plot([m for m, _ in pts], [r["frac_bw"] for _, r in pts], "o-", label=impl)
    ax1.set(xscale="log", yscale="log", xlabel="M (tokens)", ylabel="ms, 60 layers",
            title=f"internlm-chat-20b linears, {gpu}")  # fmt: skip
    ax2.set(xscale="log", xlabel="M (tokens)", ylabel="fraction of copy bandwidth",
            title=f"weight bytes / time / {bw / 1e12:.2f} TB/s")  # fmt: skip
    ax2.axhline(0.8, ls="--", c="gray")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"kernels-{slug}.png", dpi=110)


if __name__ == "__main__":
    main()
