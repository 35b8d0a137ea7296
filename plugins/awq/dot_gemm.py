"""The tiled W4A16 kernel of the ``fma``, ``dot``, ``dot_t``, ``tile_dot`` and ``tile_fma`` paths
(plugins/awq/kernels.py picks the path and its launch configuration).

- ``fma`` (M = 1): each program owns BLOCK_N output rows and walks its share of K on the CUDA
  cores; the [N, K/8] layout keeps narrow row blocks coalesced, so N / BLOCK_N programs (times
  split-K for the short-N shapes) fill the SMs.
- ``dot`` / ``dot_t`` (M up to 64): the same walk with ``tl.dot`` on the tensor cores, M padded
  to 16, x as operand A (``dot``) or the dequantized weights as operand A (``dot_t``).
- ``tile_dot`` / ``tile_fma``: variants that dequantize a whole [BN, 128] chunk with one
  broadcast shift and reshape instead of eight 16-wide slices (kept for the sweep; slower on H100).

Split-K partial sums go into a zeroed y with fp16 atomics, or with ``partial`` stay unadded as
fp32 per split (plugins/awq/split_k.py, core/partial_sums.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.ops.pdl import pdl_launch
from core.ops.triton_pdl import pdl_release, pdl_wait
from core.partial_sums import PartialSums
from plugins.awq.dequant import dequant_piece, group_params
from plugins.awq.reference import KCHUNK
from plugins.awq.split_k import atomic_split_output, launch_result

# Kernel MODE per path: CUDA-core FMAs, tl.dot with x as operand A, tl.dot with the weights as
# operand A (x^T as B), or dequantize + cuBLAS (no MODE).
MODES = {"fma": 0, "dot": 1, "dot_t": 2, "tile_dot": 3, "tile_fma": 4}


@triton.jit
def _chunk(
    acc,
    q,
    chunk,
    x_ptrs,
    mask_m,
    s_ptr,
    z_ptr,
    offs_n,
    mask_n,
    N,
    GROUP: tl.constexpr,
    MODE: tl.constexpr,
):
    """Accumulate one 128-wide K chunk: q [BN, 16] int32 against x[:, chunk*128 : +128]."""
    if MODE >= 3:  # whole-chunk tile: one [BN, 128] dequant, one x load, one dot of K = 128
        offs_j = tl.arange(0, 8)
        if GROUP == 128:
            s, zz = group_params(s_ptr, z_ptr, chunk, offs_n, mask_n, N)
            s3 = s[:, None, None]
            zz3 = zz[:, None, None]
        else:
            g = (chunk * 128 + offs_j * 16) // GROUP  # [8] group of each 16-wide slice
            s2, zz2 = group_params(s_ptr, z_ptr, g[None, :], offs_n[:, None], mask_n[:, None], N)
            s3 = s2[:, :, None]  # [BN, 8, 1]
            zz3 = zz2[:, :, None]
        v = ((q[:, None, :] >> (4 * offs_j)[None, :, None]) & 0xF) | 0x6400  # [BN, 8, 16]
        w = (v.to(tl.int16).to(tl.float16, bitcast=True) - zz3) * s3  # k = j*16 + c
        w = tl.reshape(w, (w.shape[0], 128))  # [BN, 128] in natural k order
        xc = tl.load(x_ptrs + chunk * 128, mask=mask_m[:, None], other=0.0)  # [BM, 128]
        if MODE == 3:
            acc = tl.dot(xc, tl.trans(w), acc)  # [BM, BN]
        else:
            acc += w.to(tl.float32) * xc.to(tl.float32)  # BM == 1: [BN, 128]
    else:
        for j in tl.static_range(8):
            if (j * 16) % GROUP == 0:
                s, zz = group_params(
                    s_ptr, z_ptr, (chunk * 128 + j * 16) // GROUP, offs_n, mask_n, N
                )
            w = dequant_piece(q, zz, s, j)  # [BN, 16] fp16: k = chunk*128 + j*16 + c
            xj = tl.load(x_ptrs + chunk * 128 + j * 16, mask=mask_m[:, None], other=0.0)  # [BM, 16]
            if MODE == 1:
                acc = tl.dot(xj, tl.trans(w), acc)  # [BM, BN]
            elif MODE == 2:
                acc = tl.dot(w, tl.trans(xj), acc)  # [BN, BM]: dequantized weights as operand A
            else:
                acc += w.to(tl.float32) * xj.to(tl.float32)  # BM == 1: [BN, 16]
    return acc


@triton.jit
def _awq_gemm_kernel(
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
    GROUP_M: tl.constexpr,
    MODE: tl.constexpr,
    UNROLL: tl.constexpr,
    SPLIT_K: tl.constexpr,
    USE_PDL: tl.constexpr = False,
    PARTIAL: tl.constexpr = False,
):
    pdl_wait(USE_PDL)
    if PARTIAL:  # y: fp32 [SPLIT_K, M, N], this split's slot (core/partial_sums.py)
        y_ptr += tl.program_id(1) * M * N
    # Grouped program order: GROUP_M row blocks share each weight tile while it sits in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_in_group = GROUP_M * num_pid_n
    first_m = (pid // pids_in_group) * GROUP_M
    group_rows = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % pids_in_group) % group_rows
    pid_n = (pid % pids_in_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, 16)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # K % 128 == 0: every row starts 64-byte aligned, so q loads take 16-byte vectors (Triton
    # only knows K % 16 == 0): M=32 decode 13.5 -> 12.3 ms per 60 layers on an H100 (M=64 -3%)
    qw_ptrs = qw_ptr + offs_n[:, None] * tl.multiple_of(K // 8, 16) + offs_c[None, :]  # [BN, 16]
    if MODE >= 3:
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + tl.arange(0, 128)[None, :]  # [BM, 128]
    else:
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_c[None, :]  # [BM, 16]
    if MODE == 1 or MODE == 3:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    elif MODE == 2:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    elif MODE == 0:
        acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)  # row sums taken at the end
    else:
        acc = tl.zeros((BLOCK_N, 128), dtype=tl.float32)
    chunks = K // 128 // SPLIT_K  # this program's share of K, in 128-wide chunks
    first = tl.program_id(1) * chunks
    for chunk0 in range(first, first + chunks, UNROLL):
        # Issue every chunk's load before the first use: more bytes in flight per program.
        q0 = tl.load(qw_ptrs + chunk0 * 16, mask=mask_n[:, None], other=0)  # [BN, 16] int32
        if UNROLL >= 2:
            q1 = tl.load(qw_ptrs + (chunk0 + 1) * 16, mask=mask_n[:, None], other=0)
        if UNROLL >= 4:
            q2 = tl.load(qw_ptrs + (chunk0 + 2) * 16, mask=mask_n[:, None], other=0)
            q3 = tl.load(qw_ptrs + (chunk0 + 3) * 16, mask=mask_n[:, None], other=0)
        acc = _chunk(acc, q0, chunk0, x_ptrs, mask_m, s_ptr, z_ptr, offs_n, mask_n, N, GROUP, MODE)
        if UNROLL >= 2:
            acc = _chunk(
                acc, q1, chunk0 + 1, x_ptrs, mask_m, s_ptr, z_ptr, offs_n, mask_n, N, GROUP, MODE
            )
        if UNROLL >= 4:
            acc = _chunk(
                acc, q2, chunk0 + 2, x_ptrs, mask_m, s_ptr, z_ptr, offs_n, mask_n, N, GROUP, MODE
            )
            acc = _chunk(
                acc, q3, chunk0 + 3, x_ptrs, mask_m, s_ptr, z_ptr, offs_n, mask_n, N, GROUP, MODE
            )
    pdl_release(USE_PDL)  # after the main loop, as in the GEMV (plugins/awq/gemv.py)
    if MODE == 0 or MODE == 4:
        acc = tl.sum(acc, axis=1)[None, :]  # [1, BN]
    elif MODE == 2:
        acc = tl.trans(acc)  # [BM, BN]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    if SPLIT_K == 1 or PARTIAL:
        out = acc.to(y_ptr.dtype.element_ty)
        tl.store(y_ptrs, out, mask=mask_m[:, None] & mask_n[None, :])
    else:  # y was zeroed; fp16 atomics avoid a second pass over an fp32 workspace
        tl.atomic_add(y_ptrs, acc.to(tl.float16), mask=mask_m[:, None] & mask_n[None, :])


def gemm_split(cfg, k: int) -> tuple[int, int]:
    """The split-K and unroll a tensor-core launch uses: each falls back to 1 where the K chunks
    do not divide by it (down's 108 chunks by 8, say)."""
    split_k = cfg.split_k if (k // KCHUNK) % cfg.split_k == 0 else 1
    unroll = cfg.unroll if (k // KCHUNK // split_k) % cfg.unroll == 0 else 1
    return split_k, unroll


def awq_dot_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    group_size: int,
    cfg,
    partial: bool = False,
) -> torch.Tensor | PartialSums:
    """``x @ W^T`` on one of the tiled paths (``cfg``: a kernels.Config with path in MODES);
    inputs checked by kernels._check. ``partial``: see kernels.awq_gemm."""
    m, k = x.shape
    n = qweight.shape[0]
    mode = MODES[cfg.path]
    assert mode not in (0, 4) or cfg.block_m == 1, (
        "the fma path computes one row per program (block_m=1)"
    )
    split_k, unroll = gemm_split(cfg, k)
    y = atomic_split_output(m, n, split_k, partial, x.device)  # fp32 [S, M, N] if partial
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split_k)
    _awq_gemm_kernel[grid](
        x, qweight, scales, qzeros, y, m, n, k, x.stride(0), y.stride(-2),
        GROUP=group_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, GROUP_M=cfg.group_m,
        MODE=mode, UNROLL=unroll, SPLIT_K=split_k, **pdl_launch(x), num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, PARTIAL=y.dim() == 3,
    )  # fmt: skip
    return launch_result(y)
