"""Triton W4A16 GEMV for decode (small M): few instructions per weight on the CUDA cores.

Weights are in the kernel layout of plugins/awq/layout.py (qweight int32 [N, K/8]; within a
128-wide K chunk, int32 column c holds in nibble slot j the value at k = j * 16 + c).

Each program owns BLOCK_N output rows and walks its share of K in steps of UNROLL chunks; its
tile is [BLOCK_N, UNROLL, 16] int32, loaded 16 bytes per thread, fully coalesced (each row's
UNROLL chunks are UNROLL * 64 contiguous bytes). The fp32 accumulator has the tile's shape, so
the loop has no cross-thread reduction; rows are summed once at the end. With ``PREFETCH`` the
next tile's loads are issued before this tile's math (register double-buffering): 5-15% faster
on every internlm-chat-20b shape in CUDA graphs on an H100 (bench/gemv_graph.py). Under
programmatic dependent launch (core/ops/pdl.py) the first tile's loads are issued before the
wait for the previous kernel, and the next kernel is released after the main loop.

Where it stands (bench/results/ncu-decode-gemm-h200.md): latency-bound, not bandwidth- or
issue-bound: ~34 SASS instructions per int32, issued on 0.66 of scheduler cycles with ~3 warps
per scheduler. Tried on the H200 and not kept (bench/results/gemv-*-h200.log): a K layout whose
nibble pairs are adjacent k (x pairs load as one 32-bit word: 13% fewer instructions, 4% faster),
two tiles prefetched, Triton's cp.async pipelining (``tl.range(num_stages=3..6)``).

Per int32 (8 weights) and per x row, the inline PTX (``_DOT8_PTX``) does what the AWQ /
FasterTransformer CUDA kernels do (dequantize_s4_to_fp16x2):

- ``lop3.b32 (q >> 4p) & 0x000F000F | 0x64006400``: slots p and p + 4 as two fp16 1024 + q;
- ``sub.f16x2`` of 1024 + z (exact: q - z), ``mul.f16x2`` by the scale (rounds once, as the
  fp16 weight of every other path does);
- four ``fma.rn.f16x2`` with x pairs: 8 products summed 4 per fp16 lane, then widened to fp32.
  The products carry the scale, so the fp16 partial sums are output-sized (no 1024 or q - z
  magnification) and cannot overflow where the fp16 output would not.

ptxas shares the dequantization between x rows and the x pairs between rows of the tile
(common subexpressions of the inlined PTX). Under ``TRITON_INTERPRET=1`` (CPU) inline PTX cannot
run: ``ASM=False`` computes the same sum in plain Triton (the GPU tests run both).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from core.ops.pdl import pdl_launch
from core.ops.triton_pdl import pdl_release, pdl_wait
from core.partial_sums import PartialSums
from plugins.awq.dequant import group_params
from plugins.awq.reference import KCHUNK, PIECE
from plugins.awq.split_k import atomic_split_output, launch_result

# Largest M the GEMV takes in one program (per-row accumulators are unrolled; 8 rows cost about
# 8x the per-row half2 FMAs, where tl.dot takes over).
GEMV_MAX_BLOCK_M = 8

# Operands: $0 fp32 sum (out) | $1 q int32 | $2..$5 scale of each 32-wide K quarter | $6..$9
# 1024 + zero of each quarter | $10..$17 x at slots 0..7. Slot j lies in quarter j // 2, so the
# half2 pair (p, p + 4) takes quarters (p // 2, 2 + p // 2).
_DOT8_PTX = tl.constexpr(
    """
{
.reg .b32 sa, sb, za, zb, t0, t1, t2, w0, w1, w2, w3, x0, x1, x2, x3, acc;
.reg .b16 lo, hi;
.reg .f32 f0, f1;
mov.b32 sa, {$2, $4};
mov.b32 sb, {$3, $5};
mov.b32 za, {$6, $8};
mov.b32 zb, {$7, $9};
shr.u32 t0, $1, 4;
shr.u32 t1, $1, 8;
shr.u32 t2, $1, 12;
lop3.b32 w0, $1, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 w1, t0, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 w2, t1, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 w3, t2, 0x000F000F, 0x64006400, 0xEA;
sub.rn.f16x2 w0, w0, za;
sub.rn.f16x2 w1, w1, za;
sub.rn.f16x2 w2, w2, zb;
sub.rn.f16x2 w3, w3, zb;
mul.rn.f16x2 w0, w0, sa;
mul.rn.f16x2 w1, w1, sa;
mul.rn.f16x2 w2, w2, sb;
mul.rn.f16x2 w3, w3, sb;
mov.b32 x0, {$10, $14};
mov.b32 x1, {$11, $15};
mov.b32 x2, {$12, $16};
mov.b32 x3, {$13, $17};
mul.rn.f16x2 acc, w0, x0;
fma.rn.f16x2 acc, w1, x1, acc;
fma.rn.f16x2 acc, w2, x2, acc;
fma.rn.f16x2 acc, w3, x3, acc;
mov.b32 {lo, hi}, acc;
cvt.f32.f16 f0, lo;
cvt.f32.f16 f1, hi;
add.f32 $0, f0, f1;
}
"""
)


def use_inline_asm(device: torch.device) -> bool:
    """Inline PTX on compiled CUDA; the plain-Triton twin under the interpreter (CPU tensors)."""
    return device.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1"


@triton.jit
def _dot8(q, s0, s1, s2, s3, z0, z1, z2, z3, xp, xmask, ASM: tl.constexpr):
    """sum_j x[slot j] * (q[slot j] - z) * s over the 8 nibbles of each int32 of q -> fp32.

    ``xp`` points at slot 0 of this x row ([1, U, 16], slot j at + 16 j); s*/z* are the fp16
    scale and 1024 + zero of the four 32-wide K quarters, broadcastable to q.
    """
    if ASM:
        x0 = tl.load(xp, mask=xmask, other=0.0)
        x1 = tl.load(xp + 16, mask=xmask, other=0.0)
        x2 = tl.load(xp + 32, mask=xmask, other=0.0)
        x3 = tl.load(xp + 48, mask=xmask, other=0.0)
        x4 = tl.load(xp + 64, mask=xmask, other=0.0)
        x5 = tl.load(xp + 80, mask=xmask, other=0.0)
        x6 = tl.load(xp + 96, mask=xmask, other=0.0)
        x7 = tl.load(xp + 112, mask=xmask, other=0.0)
        return tl.inline_asm_elementwise(
            _DOT8_PTX,
            "=r,r,h,h,h,h,h,h,h,h,h,h,h,h,h,h,h,h",
            [q, s0, s1, s2, s3, z0, z1, z2, z3, x0, x1, x2, x3, x4, x5, x6, x7],
            dtype=tl.float32,
            is_pure=True,
            pack=1,
        )
    else:  # the same sum in plain Triton, the 8 slots on a 4th axis (one op each: fast to interpret)
        j = tl.arange(0, 8)[None, None, None, :]  # slot j, in K quarter j // 2
        xs = tl.load(xp[:, :, :, None] + j * 16, mask=xmask[:, :, :, None], other=0.0)
        s = tl.where(j < 4, tl.where(j < 2, s0[:, :, :, None], s1[:, :, :, None]),
                     tl.where(j < 6, s2[:, :, :, None], s3[:, :, :, None]))  # fmt: skip
        zz = tl.where(j < 4, tl.where(j < 2, z0[:, :, :, None], z1[:, :, :, None]),
                      tl.where(j < 6, z2[:, :, :, None], z3[:, :, :, None]))  # fmt: skip
        v = ((q[:, :, :, None] >> (4 * j)) & 0xF) | 0x6400  # fp16 bits of 1024 + q
        w = (v.to(tl.int16).to(tl.float16, bitcast=True) - zz) * s  # fp16 (q - z) * s
        return tl.sum(w.to(tl.float32) * xs.to(tl.float32), axis=3)


@triton.jit
def _quarter_params(s_ptr, z_ptr, chunk3, Q: tl.constexpr, n3, mask3, N, GROUP: tl.constexpr):
    """Scale and 1024 + zero of K quarter Q (32 values) of chunks chunk3, rows n3: fp16 tiles."""
    return group_params(s_ptr, z_ptr, (chunk3 * 128 + Q * 32) // GROUP, n3, mask3, N)


@triton.jit
def _row_out(acc, y_ptr, m, M, N, stride_ym, offs_n, ATOMIC: tl.constexpr):
    y = tl.sum(tl.sum(acc, axis=2), axis=1)  # [BN]
    ptrs = y_ptr + m * stride_ym + offs_n
    mask = offs_n < tl.where(m < M, N, 0)
    if not ATOMIC:  # y, or this split's fp32 partial sums
        tl.store(ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:  # y was zeroed; fp16 atomics avoid a second pass over an fp32 workspace
        tl.atomic_add(ptrs, y.to(tl.float16), mask=mask)


@triton.jit
def _awq_gemv_kernel(
    x_ptr,
    qw_ptr,
    s_ptr,
    z_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_ym,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UNROLL: tl.constexpr,
    SPLIT_K: tl.constexpr,
    ASM: tl.constexpr,
    PREFETCH: tl.constexpr = False,
    USE_PDL: tl.constexpr = False,
    PARTIAL: tl.constexpr = False,
):
    # M blocks fastest: the programs that share a weight tile run together (it stays in L2).
    m0 = tl.program_id(0) * BLOCK_M
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    if PARTIAL:  # y: fp32 [SPLIT_K, M, N], this split's slot (core/partial_sums.py)
        y_ptr += pid_k * M * N
    ATOMIC: tl.constexpr = SPLIT_K > 1 and not PARTIAL
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n3 = offs_n[:, None, None]  # [BN, 1, 1]
    u3 = tl.arange(0, UNROLL)[None, :, None]  # [1, U, 1]
    c3 = tl.arange(0, 16)[None, None, :]  # [1, 1, 16]
    # K % 128 == 0: rows start 64-byte aligned, so q loads take 16-byte vectors (Triton only
    # knows K % 16 == 0, which gives 8-byte ones)
    qw_ptrs = qw_ptr + n3 * tl.multiple_of(K // 8, 16) + u3 * 16 + c3  # [BN, U, 16]
    x_ptrs = x_ptr + m0 * stride_xm + u3 * 128 + c3  # [1, U, 16] slot 0 of row m0

    n_chunks = K // 128
    per_split = tl.cdiv(n_chunks, SPLIT_K)
    first = pid_k * per_split
    last = tl.minimum(first + per_split, n_chunks)
    # Row i of this M block reads x up to chunk lim{i}: none where the row is past M.
    lim0 = tl.where(m0 < M, last, 0)
    lim1 = tl.where(m0 + 1 < M, last, 0)
    lim2 = tl.where(m0 + 2 < M, last, 0)
    lim3 = tl.where(m0 + 3 < M, last, 0)
    lim4 = tl.where(m0 + 4 < M, last, 0)
    lim5 = tl.where(m0 + 5 < M, last, 0)
    lim6 = tl.where(m0 + 6 < M, last, 0)
    lim7 = tl.where(m0 + 7 < M, last, 0)

    acc0 = tl.zeros((BLOCK_N, UNROLL, 16), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N, UNROLL, 16), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, UNROLL, 16), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_N, UNROLL, 16), dtype=tl.float32)
    acc4 = tl.zeros((BLOCK_N, UNROLL, 16), dtype=tl.float32)
    acc5 = tl.zeros((BLOCK_N, UNROLL, 16), dtype=tl.float32)
    acc6 = tl.zeros((BLOCK_N, UNROLL, 16), dtype=tl.float32)
    acc7 = tl.zeros((BLOCK_N, UNROLL, 16), dtype=tl.float32)
    if PREFETCH:  # register double-buffering: the next tile's loads fly during this one's math
        q_next = tl.load(qw_ptrs + first * 16, mask=(n3 < N) & (first + u3 < last), other=0,
                         eviction_policy="evict_first")  # fmt: skip
    # PDL: the first weight tile (no kernel writes weights) is in flight before x is ready
    pdl_wait(USE_PDL)
    for chunk0 in range(first, last, UNROLL):
        chunk3 = chunk0 + u3  # [1, U, 1]
        mask3 = (n3 < N) & (chunk3 < last)  # [BN, U, 1]
        if PREFETCH:
            q = q_next
            nxt = chunk3 + UNROLL
            q_next = tl.load(
                qw_ptrs + (chunk0 + UNROLL) * 16, mask=(n3 < N) & (nxt < last), other=0,
                eviction_policy="evict_first",
            )  # fmt: skip
        else:  # weights first out of L2 (read once per step), as in mma_gemv._load_w
            q = tl.load(qw_ptrs + chunk0 * 16, mask=mask3, other=0, eviction_policy="evict_first")
        s0, z0 = _quarter_params(s_ptr, z_ptr, chunk3, 0, n3, mask3, N, GROUP)
        if GROUP == 128:
            s1, z1, s2, z2, s3, z3 = s0, z0, s0, z0, s0, z0
        elif GROUP == 64:
            s2, z2 = _quarter_params(s_ptr, z_ptr, chunk3, 2, n3, mask3, N, GROUP)
            s1, z1, s3, z3 = s0, z0, s2, z2
        else:
            s1, z1 = _quarter_params(s_ptr, z_ptr, chunk3, 1, n3, mask3, N, GROUP)
            s2, z2 = _quarter_params(s_ptr, z_ptr, chunk3, 2, n3, mask3, N, GROUP)
            s3, z3 = _quarter_params(s_ptr, z_ptr, chunk3, 3, n3, mask3, N, GROUP)
        xp = x_ptrs + chunk0 * 128
        acc0 += _dot8(q, s0, s1, s2, s3, z0, z1, z2, z3, xp, chunk3 < lim0, ASM)
        if BLOCK_M > 1:
            xp += stride_xm
            acc1 += _dot8(q, s0, s1, s2, s3, z0, z1, z2, z3, xp, chunk3 < lim1, ASM)
        if BLOCK_M > 2:
            xp += stride_xm
            acc2 += _dot8(q, s0, s1, s2, s3, z0, z1, z2, z3, xp, chunk3 < lim2, ASM)
            xp += stride_xm
            acc3 += _dot8(q, s0, s1, s2, s3, z0, z1, z2, z3, xp, chunk3 < lim3, ASM)
        if BLOCK_M > 4:
            xp += stride_xm
            acc4 += _dot8(q, s0, s1, s2, s3, z0, z1, z2, z3, xp, chunk3 < lim4, ASM)
            xp += stride_xm
            acc5 += _dot8(q, s0, s1, s2, s3, z0, z1, z2, z3, xp, chunk3 < lim5, ASM)
            xp += stride_xm
            acc6 += _dot8(q, s0, s1, s2, s3, z0, z1, z2, z3, xp, chunk3 < lim6, ASM)
            xp += stride_xm
            acc7 += _dot8(q, s0, s1, s2, s3, z0, z1, z2, z3, xp, chunk3 < lim7, ASM)
    # PDL: the next kernel may launch now, its programs landing as these finish (released at the
    # start, every GEMV of a chain would sit on the SMs at once, prefetching, and slow this one)
    pdl_release(USE_PDL)
    _row_out(acc0, y_ptr, m0, M, N, stride_ym, offs_n, ATOMIC)
    if BLOCK_M > 1:
        _row_out(acc1, y_ptr, m0 + 1, M, N, stride_ym, offs_n, ATOMIC)
    if BLOCK_M > 2:
        _row_out(acc2, y_ptr, m0 + 2, M, N, stride_ym, offs_n, ATOMIC)
        _row_out(acc3, y_ptr, m0 + 3, M, N, stride_ym, offs_n, ATOMIC)
    if BLOCK_M > 4:
        _row_out(acc4, y_ptr, m0 + 4, M, N, stride_ym, offs_n, ATOMIC)
        _row_out(acc5, y_ptr, m0 + 5, M, N, stride_ym, offs_n, ATOMIC)
        _row_out(acc6, y_ptr, m0 + 6, M, N, stride_ym, offs_n, ATOMIC)
        _row_out(acc7, y_ptr, m0 + 7, M, N, stride_ym, offs_n, ATOMIC)


def gemv_block_m(m: int) -> int:
    """x rows one GEMV program takes (its weight tile is read once for all of them)."""
    return min(GEMV_MAX_BLOCK_M, triton.next_power_of_2(m))


def awq_gemv(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    group_size: int,
    block_n: int = 8,
    unroll: int = 4,
    split_k: int = 1,
    num_warps: int = 1,
    asm: bool | None = None,
    prefetch: bool = False,
    partial: bool = False,
) -> torch.Tensor | PartialSums:
    """``x @ W^T`` for small M on the CUDA cores (inputs checked by kernels._check).

    # x [M, K] fp16 · qweight [N, K/8] int32 · scales [K/G, N] fp16 · qzeros [K/G, N/8] int32
    #   -> [M, N] fp16; grid (M / BLOCK_M, N / block_n, split_k), tile [block_n, unroll, 16]

    ``partial``: with more than one split, return the splits' fp32 partial sums unadded
    (core/partial_sums.py) instead of adding them into a zeroed y with atomics.
    """
    assert KCHUNK == 128 and PIECE == 16, "the GEMV hard-codes the 128-wide K chunk of layout.py"
    m, k = x.shape
    n = qweight.shape[0]
    assert x.stride(1) == 1 and qweight.is_contiguous(), "x rows and qweight must be contiguous"
    assert group_size in (32, 64, 128) and k % KCHUNK == 0, f"K={k}, G={group_size}"
    assert unroll & (unroll - 1) == 0 and block_n & (block_n - 1) == 0, "powers of two"
    block_m = gemv_block_m(m)
    split_k = max(1, min(split_k, k // KCHUNK))
    asm = use_inline_asm(x.device) if asm is None else asm
    y = atomic_split_output(m, n, split_k, partial, x.device)  # fp32 [S, M, N] if partial
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split_k)
    _awq_gemv_kernel[grid](
        x, qweight, scales, qzeros, y, m, n, k, x.stride(0), y.stride(-2),
        GROUP=group_size, BLOCK_M=block_m, BLOCK_N=block_n, UNROLL=unroll, SPLIT_K=split_k,
        ASM=asm, PREFETCH=prefetch, **pdl_launch(x), num_warps=num_warps, PARTIAL=y.dim() == 3,
    )  # fmt: skip
    return launch_result(y)
