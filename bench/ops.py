"""Microbenchmark of the Triton model ops at internlm-chat-20b shapes (H=40, D=128, hidden 5120,
intermediate 13824, KV block 16), each beside a torch baseline measured in the same run.

Decode-sized ops are timed as CUDA-graph replays over a stack of per-layer buffers (as many
layers as it takes to overflow L2, like the model's 60 distinct caches), so neither launch
overhead nor a warm L2 flatters them; prefill attention is timed with ``do_bench`` (L2 flushed).
Prints the GPU, versions and copy bandwidth, then one table; writes a CSV (``--out``).

    PYTHONPATH=. python bench/ops.py [--out bench/results] [--sweep]
"""

# ruff: noqa: B023 (every lambda here is timed at once, inside its loop iteration)

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench, do_bench_cudagraph

from bench.hardware import copy_bandwidth
from core.ops import reference
from core.ops import triton_decode_attention as decode_mod
from core.ops import triton_prefill_attention as prefill_mod
from core.ops.triton_activation import silu_mul
from core.ops.triton_kv_cache import store_kv
from core.ops.triton_norm import add_rms_norm, rms_norm
from core.ops.triton_rotary import rotary

H, D, HIDDEN, INTER, BS = 40, 128, 5120, 13824, 16
MAX_BLOCKS = 8192 // BS  # session_len 8192: the static block-table width of graph mode
L2_BYTES = 50 << 20
ROWS: list[dict] = []


def layers_for(bytes_per_layer: int, cap: int = 60) -> int:
    return max(2, min(cap, math.ceil(4 * L2_BYTES / max(bytes_per_layer, 1))))


def graph_ms(fn, layers: int) -> float:
    """Median time of one layer's call, from graph replays of ``layers`` calls."""

    def run_all():
        for i in range(layers):
            fn(i)

    torch.cuda.synchronize()  # do_bench_cudagraph runs on a side stream: inputs must be ready
    return do_bench_cudagraph(run_all, rep=50, return_mode="median") / layers


def record(op: str, shape: str, impl: str, ms: float, nbytes: int, bw: float) -> None:
    gbs = nbytes / ms / 1e6
    ROWS.append(dict(op=op, shape=shape, impl=impl, us=round(ms * 1e3, 2), gbs=round(gbs),
                     frac_copy_bw=round(gbs / bw, 3)))  # fmt: skip


def paged_cache(batch: int, ctx: int, layers: int):
    """Per-layer K/V caches with each sequence's blocks scattered at random, graph-style tables."""
    nblk = batch * MAX_BLOCKS // 4 + batch * triton.cdiv(ctx, BS)
    caches = [(torch.randn(nblk, BS, H, D, device="cuda", dtype=torch.float16),
               torch.randn(nblk, BS, H, D, device="cuda", dtype=torch.float16))
              for _ in range(layers)]  # fmt: skip
    tables = torch.zeros(batch, MAX_BLOCKS, dtype=torch.int32, device="cuda")
    used = triton.cdiv(ctx, BS)
    tables[:, :used] = torch.randperm(nblk, device="cuda")[: batch * used].view(batch, used).int()
    lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    return caches, tables, lens


# (BLOCK_N, SPLIT_BLOCK_N, PROGRAMS_PER_SM, NUM_WARPS, NUM_STAGES) of the decode sweep: the
# tile of one program per (sequence, head), and of split contexts
DECODE_KNOBS = ("BLOCK_N", "SPLIT_BLOCK_N", "PROGRAMS_PER_SM", "NUM_WARPS", "NUM_STAGES")
DECODE_SWEEP = [
    (32, 32, 4, 4, 3), (32, 64, 8, 4, 3), (32, 16, 8, 4, 3), (64, 64, 4, 4, 3),
    (128, 128, 4, 4, 3), (128, 128, 4, 8, 3), (32, 64, 4, 4, 2), (32, 64, 4, 4, 4),
    (32, 64, 2, 4, 3),
]  # fmt: skip


def bench_decode(bw: float, sweep: bool) -> None:
    configs = [tuple(int(getattr(decode_mod, k)) for k in DECODE_KNOBS)]
    if sweep:
        configs += DECODE_SWEEP
    default = configs[0]
    for batch, ctx in [(1, 256), (1, 1024), (1, 4096), (16, 512), (16, 1024), (64, 1024)]:
        kv_bytes = 2 * batch * ctx * H * D * 2
        layers = layers_for(kv_bytes, cap=max(2, min(60, (12 << 30) // (2 * kv_bytes))))
        caches, tables, lens = paged_cache(batch, ctx, layers)
        q = torch.randn(batch, H, D, device="cuda", dtype=torch.float16)
        shape = f"B={batch} ctx={ctx}"
        for config in dict.fromkeys(configs):
            for knob, value in zip(DECODE_KNOBS, config, strict=True):
                setattr(decode_mod, knob, value)
            block_n, split_block_n, per_sm, warps, stages = config
            splits = decode_mod.num_splits(batch, H, MAX_BLOCKS * BS, q.device)
            tile = split_block_n if splits > 1 else block_n
            tag = f"BN={tile} ppsm={per_sm} w={warps} S={splits} stages={stages}"
            # the default tiles also run the reduce both ways: fused into the split kernel (the
            # last program to arrive merges) and as a second kernel; one split has no reduce
            impls = [("triton", None)]
            if config == default and splits > 1:
                impls = [("triton-fused", True), ("triton-2kernel", False)]
            for impl, fused in impls:
                ms = graph_ms(
                    lambda i: decode_mod.decode_attention(
                        q, *caches[i], tables, lens, D**-0.5, fused=fused
                    ),
                    layers,
                )
                record("decode_attn", shape, f"{impl} {tag}", ms, kv_bytes, bw)
        for knob, value in zip(DECODE_KNOBS, default, strict=True):
            setattr(decode_mod, knob, value)
        caches.clear()
        # baseline: SDPA on contiguous [B, H, ctx, D] K/V (no paging at all)
        kv = [(torch.randn(batch, H, ctx, D, device="cuda", dtype=torch.float16),
               torch.randn(batch, H, ctx, D, device="cuda", dtype=torch.float16)) for _ in range(layers)]  # fmt: skip
        q4 = q[:, :, None, :]  # (B, H, 1, D)
        ms = graph_ms(lambda i: F.scaled_dot_product_attention(q4, *kv[i]), layers)
        record("decode_attn", shape, "torch SDPA (contiguous KV)", ms, kv_bytes, bw)
        kv.clear()


def bench_prefill(bw: float, sweep: bool) -> None:
    tiles = [
        (prefill_mod.BLOCK_M, prefill_mod.BLOCK_N, prefill_mod.NUM_WARPS, prefill_mod.NUM_STAGES)
    ]
    if sweep:
        tiles += [(128, 64, 8, 2), (128, 32, 4, 2), (64, 32, 4, 2), (64, 64, 4, 3), (128, 64, 4, 3)]
    default = tiles[0]
    for lens in [[256], [1024], [512] * 4, [2048]]:
        t = sum(lens)
        caches, tables, _ = paged_cache(len(lens), max(lens), 1)
        ctx = torch.tensor(lens, dtype=torch.int32, device="cuda")
        qsl = torch.tensor([0] + lens, device="cuda").cumsum(0).int()
        q = torch.randn(t, H, D, device="cuda", dtype=torch.float16)
        shape = f"Q=C={'+'.join(map(str, lens))}"
        flops = sum(2 * 2 * n * n * H * D // 2 for n in lens)
        for bm, bn, warps, stages in dict.fromkeys(tiles):
            prefill_mod.NUM_WARPS, prefill_mod.NUM_STAGES = warps, stages
            ms = do_bench(lambda: prefill_mod.prefill_attention(
                q, *caches[0], tables, ctx, qsl, max(lens), D**-0.5, block_m=bm, block_n=bn),
                return_mode="median")  # fmt: skip
            record(
                "prefill_attn",
                shape,
                f"triton {bm}x{bn} w={warps} st={stages} ({flops / ms / 1e9:.0f} TFLOP/s)",
                ms,
                0,
                bw,
            )
        prefill_mod.NUM_WARPS, prefill_mod.NUM_STAGES = default[2], default[3]
        # baseline: causal SDPA per sequence on contiguous K/V, what a non-paged engine runs
        qkv = [torch.randn(3, 1, H, n, D, device="cuda", dtype=torch.float16) for n in lens]
        ms = do_bench(lambda: [F.scaled_dot_product_attention(*x, is_causal=True) for x in qkv],
                      return_mode="median")  # fmt: skip
        record(
            "prefill_attn", shape, f"torch SDPA causal ({flops / ms / 1e9:.0f} TFLOP/s)", ms, 0, bw
        )


def bench_elementwise(bw: float) -> None:
    h = torch.float16
    for t in (1, 16, 256):
        nb = t * HIDDEN * 2
        layers = layers_for(3 * nb)
        xs = [torch.randn(t, HIDDEN, device="cuda", dtype=h) for _ in range(layers)]
        rs = [torch.randn(t, HIDDEN, device="cuda", dtype=h) for _ in range(layers)]
        w = torch.randn(HIDDEN, device="cuda", dtype=h)
        for impl, fn in (("triton", add_rms_norm), ("torch ref", reference.add_rms_norm)):
            ms = graph_ms(lambda i: fn(xs[i], rs[i], w, 1e-6), layers)
            record("add_rms_norm", f"T={t} H={HIDDEN}", impl, ms, 4 * nb, bw)
        for impl, fn in (("triton", rms_norm), ("torch ref", reference.rms_norm)):
            ms = graph_ms(lambda i: fn(xs[i], w, 1e-6), layers)
            record("rms_norm", f"T={t} H={HIDDEN}", impl, ms, 2 * nb, bw)

        gu = [
            torch.randn(t, 2 * INTER, device="cuda", dtype=h)
            for _ in range(layers_for(t * INTER * 6))
        ]
        for impl, fn in (("triton", silu_mul), ("torch ref", reference.silu_mul)):
            ms = graph_ms(lambda i: fn(gu[i]), len(gu))
            record("silu_mul", f"T={t} I={INTER}", impl, ms, t * INTER * 6, bw)

        qkv = [
            torch.randn(t, 3 * HIDDEN, device="cuda", dtype=h)
            for _ in range(layers_for(t * HIDDEN * 8))
        ]
        ang = torch.rand(t, D // 2, device="cuda") * 100
        cos, sin = ang.cos(), ang.sin()
        views = [
            (x[:, :HIDDEN].view(t, H, D), x[:, HIDDEN : 2 * HIDDEN].view(t, H, D)) for x in qkv
        ]
        for impl, fn in (("triton", rotary), ("torch ref", reference.rotary)):
            ms = graph_ms(lambda i: fn(*views[i], cos, sin), len(views))
            record("rotary", f"T={t} H={H}", impl, ms, t * HIDDEN * 8, bw)

        kc = [(torch.empty(256 + t, BS, H, D, device="cuda", dtype=h),
               torch.empty(256 + t, BS, H, D, device="cuda", dtype=h)) for _ in range(len(qkv))]  # fmt: skip
        slots = (torch.randperm((256 + t) * BS, device="cuda")[:t]).long()
        kvv = [
            (x[:, HIDDEN : 2 * HIDDEN].view(t, H, D), x[:, 2 * HIDDEN :].view(t, H, D)) for x in qkv
        ]

        def index_copy_kv(k, v, k_cache, v_cache, slot_mapping):
            # graph-safe torch baseline (the reference's boolean mask syncs the host)
            k_cache.view(-1, H, D).index_copy_(0, slot_mapping, k)
            v_cache.view(-1, H, D).index_copy_(0, slot_mapping, v)

        for impl, fn in (("triton", store_kv), ("torch index_copy_", index_copy_kv)):
            ms = graph_ms(lambda i: fn(*kvv[i], *kc[i], slots), len(kc))
            record("store_kv", f"T={t} Hk={H}", impl, ms, t * HIDDEN * 8, bw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--sweep", action="store_true", help="also time the other tile configs")
    ap.add_argument("--ops", default="elementwise,decode,prefill", help="comma-separated groups")
    args = ap.parse_args()
    name = torch.cuda.get_device_name()
    bw = copy_bandwidth() / 1e9  # GB/s, read + write
    print(f"{name} · torch {torch.__version__} · triton {triton.__version__} · copy {bw:.0f} GB/s")
    groups = args.ops.split(",")
    if "elementwise" in groups:
        bench_elementwise(bw)
    if "decode" in groups:
        bench_decode(bw, args.sweep)
    if "prefill" in groups:
        bench_prefill(bw, args.sweep)
    width = max(len(r["impl"]) for r in ROWS)
    print(f"{'op':<13} {'shape':<18} {'impl':<{width}} {'us':>9} {'GB/s':>6} {'frac':>6}")
    for r in ROWS:
        print(
            f"{r['op']:<13} {r['shape']:<18} {r['impl']:<{width}} {r['us']:>9.2f} {r['gbs']:>6} {r['frac_copy_bw']:>6}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = name.replace("NVIDIA ", "").replace(" ", "-")
    with open(out / f"ops-{slug}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROWS[0]) + ["gpu", "torch", "triton", "copy_gbs"])
        w.writeheader()
        for r in ROWS:
            w.writerow({**r, "gpu": name, "torch": torch.__version__, "triton": triton.__version__,
                        "copy_gbs": round(bw)})  # fmt: skip


if __name__ == "__main__":
    main()
