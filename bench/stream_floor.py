"""How fast can a kernel merely read each decode GEMM's int4 weights? The GEMV's floor.

    PYTHONPATH=. python bench/stream_floor.py [--out bench/results]

For each internlm-chat-20b shape, two Triton kernels that load the qweight bytes and XOR them
together (no dequantization, no math worth the name) run over COPIES distinct weight sets in
one CUDA graph, as bench/gemv_graph.py times the GEMV: ``rows`` walks the [N, K/8] layout as
the GEMV does (BLOCK_N rows, UNROLL 128-wide chunks per step), ``flat`` reads the same bytes as
one contiguous range per program. The best of each is what a decode GEMM of that shape could
reach in this setting (launch, ramp-up and tail included): the gap between it and the GEMV is
the GEMV's own cost, the gap between it and copy bandwidth is the launch's. Writes
stream-floor-<gpu>.csv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import triton
import triton.language as tl

from bench.gemv_graph import COPIES, graph_time_us
from bench.hardware import copy_bandwidth, gpu_slug, versions
from bench.kernels import SHAPES
from bench.sweep import write_csv

# (block_n, unroll, num_warps) for the row walk; (programs per SM, block, num_warps) for flat
ROWS = [(4, 8, 1), (8, 2, 1), (8, 4, 1), (16, 8, 4), (32, 4, 4)]
FLAT = [(4, 2048, 8), (8, 1024, 4), (16, 512, 2)]


@triton.jit
def _rows_kernel(q_ptr, out_ptr, KQ, BLOCK_N: tl.constexpr, UNROLL: tl.constexpr):
    pid = tl.program_id(0)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)[:, None, None]
    u = tl.arange(0, UNROLL)[None, :, None]
    c = tl.arange(0, 16)[None, None, :]
    ptrs = q_ptr + n * tl.multiple_of(KQ, 16) + u * 16 + c
    acc = tl.zeros((BLOCK_N, UNROLL, 16), dtype=tl.int32)
    for k0 in range(0, KQ // 16, UNROLL):
        acc ^= tl.load(ptrs + k0 * 16)
    tl.store(out_ptr + pid * BLOCK_N + tl.arange(0, BLOCK_N), tl.xor_sum(tl.xor_sum(acc, 2), 1))


@triton.jit
def _flat_kernel(q_ptr, out_ptr, per_program, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base = q_ptr + pid.to(tl.int64) * per_program
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for i in range(0, per_program, BLOCK):
        acc ^= tl.load(base + i + offs)
    tl.store(out_ptr + pid, tl.xor_sum(acc, 0))


def measure_shape(name: str, k: int, n: int, bw: float, sms: int) -> list[dict]:
    """Every ROWS and FLAT config over one shape's qweight bytes; a CSV row each."""
    qs = [
        torch.randint(-(2**31), 2**31 - 1, (n, k // 8), dtype=torch.int32, device="cuda")
        for _ in range(COPIES)
    ]
    out = torch.empty(n, dtype=torch.int32, device="cuda")
    rows = []
    for bn, u, w in ROWS:

        def run_rows(bn=bn, u=u, w=w):
            for q in qs:
                _rows_kernel[(n // bn,)](q, out, k // 8, BLOCK_N=bn, UNROLL=u, num_warps=w)

        rows.append(("rows", f"block_n={bn} unroll={u} warps={w}", qs[0].numel() * 4, run_rows))
    for per_sm, block, w in FLAT:
        progs = sms * per_sm
        per = qs[0].numel() // progs // block * block

        def run_flat(progs=progs, per=per, block=block, w=w):
            for q in qs:
                _flat_kernel[(progs,)](q, out, per, BLOCK=block, num_warps=w)

        rows.append(
            ("flat", f"programs={progs} block={block} warps={w}", progs * per * 4, run_flat)
        )
    result = []
    for kernel, config, nbytes, fn in rows:
        t = graph_time_us(fn)
        result.append(dict(shape=name, kernel=kernel, config=config, mbytes=nbytes / 1e6,
                           time_us=t, frac_bw=nbytes / (t * 1e-6) / bw))  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"GPU {gpu} | {versions()} | copy bandwidth {bw / 1e12:.3f} TB/s", flush=True)
    rows, best = [], {}
    for name, (k, sizes) in SHAPES.items():
        sel = measure_shape(name, k, sum(sizes), bw, sms)
        rows += sel
        best[name] = b = max(sel, key=lambda r: r["frac_bw"])
        print(f"{name:8s} {b['mbytes']:6.1f} MB  ideal {b['mbytes'] / bw * 1e12:5.1f} us  best "
              f"{b['kernel']} {b['time_us']:5.1f} us ({b['frac_bw']:.2f}) {b['config']}",
              flush=True)  # fmt: skip
        torch.cuda.empty_cache()
    write_csv(rows, list(rows[0]), args.out / f"stream-floor-{gpu_slug(gpu)}.csv")
    total = sum(b["time_us"] for b in best.values())
    mb = sum(b["mbytes"] for b in best.values())
    print(f"layers60 floor (best per shape): {total * 60 / 1e3:.2f} ms for {mb * 60 / 1e3:.2f} GB "
          f"of qweight (frac {mb * 1e6 / (total * 1e-6) / bw:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
