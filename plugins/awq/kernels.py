"""Triton W4A16 kernels for AWQ int4 (fp16 activations, fp32 accumulation, fp16 output).

Weights are in the kernel layout of plugins/awq/layout.py; reference.py is the oracle. Paths:

- ``gemv`` (decode, M <= GEMV_MAX_M): plugins/awq/gemv.py, inline-PTX dequantization and half2
  FMAs on the CUDA cores (a plain-Triton twin under the interpreter).

- ``mma`` (decode, M <= 16, group size 128): plugins/awq/mma_gemv.py, ``mma.sync`` from inline
  PTX on registers loaded in the tensor-core operand layout (a plain-Triton twin under the
  interpreter).
- ``fma`` (M = 1): each program owns BLOCK_N output rows and walks its share of K on the CUDA
  cores; the [N, K/8] layout keeps narrow row blocks coalesced, so N / BLOCK_N programs (times
  split-K for the short-N shapes, partial sums added with fp16 atomics) fill the SMs.
- ``dot`` / ``dot_t`` (M up to 64): the same walk with ``tl.dot`` on the tensor cores, M padded
  to 16, x as operand A (``dot``) or the dequantized weights as operand A (``dot_t``).
- ``tile_dot`` / ``tile_fma``: variants that dequantize a whole [BN, 128] chunk with one
  broadcast shift and reshape instead of eight 16-wide slices (kept for the sweep; slower on H100).
- ``dequant`` (M > 64): dequantize the whole weight to fp16 [N, K], then cuBLAS ``F.linear``.

Dequantization (the fp16 magic number, exact q - z) is plugins/awq/dequant.py's, shared by every path.

All kernels run under ``TRITON_INTERPRET=1`` on CPU tensors (tests use that).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from core.ops.pdl import pdl_launch
from core.ops.triton_pdl import pdl_release, pdl_wait
from core.partial_sums import PartialSums
from plugins.awq.dequant import (
    DEFAULT_TILE,
    awq_dequantize,
    check_weight,
    dequant_piece,
    group_params,
)
from plugins.awq.gemv import awq_gemv
from plugins.awq.mma_gemv import MMA_GROUP, MMA_MAX_M, awq_mma_gemv, mma_supported
from plugins.awq.mma_ptx import MmaLayoutError
from plugins.awq.reference import KCHUNK
from plugins.awq.split_k import atomic_split_output, launch_result

# Batch sizes up to this use the decode configs (small BLOCK_N, many programs, split-K); above
# it prefill. From DEQUANT_MIN_M on, prefill dequantizes to fp16 and calls cuBLAS: the
# bench/kernels.py --sweep on an H100 (bench/results/kernels-h100.md) measured, at M=256, 642 us
# for the four internlm-chat-20b shapes that way vs 735 us for the best fused tiled config.
DECODE_MAX_M = 64
# Batch sizes up to this take the CUDA-core GEMV (plugins/awq/gemv.py): the H100 sweeps
# measured 161 us for the four shapes at M=4 in CUDA graphs (bench/gemv_graph.py; tl.dot at
# M=16: 166 us) and, launch by launch, 469 us at M=8 (tl.dot: 285 us; kernels-sweep-h100.csv).
GEMV_MAX_M = 4
DEQUANT_MIN_M = DECODE_MAX_M + 1

# Kernel MODE per path: CUDA-core FMAs, tl.dot with x as operand A, tl.dot with the weights as
# operand A (x^T as B), or dequantize + cuBLAS (no MODE).
MODES = {"fma": 0, "dot": 1, "dot_t": 2, "tile_dot": 3, "tile_fma": 4}


@dataclass(frozen=True)
class Config:
    """One launch configuration; ``path`` is "gemv", "mma", "fma", "dot", "dot_t" or "dequant".

    ``gemv`` reads block_n, num_warps, unroll and split_k (its M block is fixed by M);
    ``mma`` block_n (16-row tiles, block_n / 16 / num_warps per warp), split_k, unroll, prefetch;
    ``dequant`` block_n, num_warps and unroll (128-wide K chunks per program).
    """

    path: str
    block_m: int = 16
    block_n: int = 16
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    unroll: int = 1  # 128-wide K chunks loaded per loop iteration (more loads in flight)
    split_k: int = 1  # programs sharing one output tile's K range (fp16 atomics; mma: in order)
    prefetch: bool = False  # gemv: load the next tile before this one's math (double-buffer)


# The prefill dequantize's launch (plugins/awq/dequant.py says which benchmark chose it).
DEQUANT_CONFIG = Config(
    "dequant", block_n=DEFAULT_TILE.block_n, num_warps=DEFAULT_TILE.num_warps,
    unroll=DEFAULT_TILE.unroll,
)  # fmt: skip


def default_config(m: int, n: int, k: int, group_size: int = MMA_GROUP, mma: bool = True) -> Config:
    """The configuration the decode and prefill sweeps chose for an [M, K] x [K, N] product.

    Decode needs several programs per SM to keep enough loads in flight: M <= 16 at group size
    128 takes the tensor-core GEMV (plugins/awq/mma_gemv.py; not with ``mma=False``) except where
    _mma_config leaves it to the CUDA-core GEMV; otherwise M <= GEMV_MAX_M takes the GEMV (narrow
    rows, the next tile prefetched) and larger decode batches tl.dot with split-K. Decode choices
    come from ``bench/gemv_graph.py`` (times inside CUDA graphs, as the engine runs them:
    bench/results/gemv-graph-h100*.csv and, on the H200, gemv-graph-h200*.csv); prefill's from
    ``bench/kernels.py --sweep``.
    """
    if mma and m <= MMA_MAX_M and group_size == MMA_GROUP and _mma_enabled:
        cfg = _mma_config(m, n, k)
        if cfg is not None:
            return cfg
    if m <= GEMV_MAX_M:
        return _gemv_config(m, n, k)
    split_k = 4 if k > 8192 else 8  # down's 108 K chunks do not divide by 8
    if m <= 16:  # 4 shapes at M=16: 155 us on an H100 (dot, 4 warps, split-K 2: 280 us)
        if k > 8192:  # down: 9 splits of 12 chunks, H200 28.8 us (split-K 4: 39.8 us)
            return Config("dot_t", 16, 64, num_warps=2, unroll=1, split_k=9)
        return Config("dot_t", 16, 64, num_warps=2, unroll=2, split_k=split_k)
    if m <= 32:  # 4 shapes at M=32: 224 us (dot_t, 4 warps, split-K 2 or none: 329 us)
        if n <= 8192:  # o: 22.4 us, down: 52.8 us
            return Config("dot", 32, 64, num_warps=2, unroll=2, split_k=split_k)
        return Config("dot_t", 32, 128, num_warps=4, unroll=2, split_k=4)  # qkv 55.4, gate_up 92.9
    if m <= DECODE_MAX_M:  # not yet swept in graphs (bench/kernels.py --sweep)
        if n <= 8192:
            return Config("dot_t", 64, 32, split_k=2)
        return Config("dot_t", 64, 64, num_stages=4)
    return DEQUANT_CONFIG


# False once this Triton failed the tensor-core GEMV's layout check (decode then takes the GEMV
# and tl.dot paths, as before it existed)
_mma_enabled = True


def _mma_config(m: int, n: int, k: int) -> Config | None:
    """Tensor-core GEMV launch per decode shape, or None where the CUDA-core GEMV is faster.

    From the graph sweep on an H200 (bench/gemv_graph.py --paths mma, gemv-graph-h200-mma.csv;
    us at M = 1 / 2 / 8 / 16, against the GEMV and tl.dot before it): qkv 17.3 / 18.3 / 20.4 /
    24.6 (18.5 / 26.7 / 32.1 / 35.5), o - / 10.6 / 11.4 / 13.0 (9.6 / 12.3 / 14.6 / 16.1),
    gate_up 27.4 / 28.5 / 32.3 / 40.5 (29.9 / 40.5 / 51.2 / 57.3), down 17.2 / 17.9 / 20.8 / 23.6
    (21.5 / 27.3 / 26.8 / 28.5). Two 16-row tiles per warp (they share each x fragment) won
    almost everywhere; block_n = 16 x tiles per program.
    """
    if k > 8192:  # down 13824 -> 5120: 9 splits of 12 chunks
        if m <= 8:
            return Config("mma", block_n=64, num_warps=2, unroll=2, split_k=9)
        return Config("mma", block_n=64, num_warps=2, split_k=9, prefetch=True)
    if n <= 8192:  # o 5120 -> 5120: the GEMV's 9.6 us at M=1 beats 10.3
        if m == 1:
            return None
        if m <= 8:
            return Config("mma", block_n=128, num_warps=4, split_k=8)
        return Config("mma", block_n=64, num_warps=2, split_k=8, prefetch=True)
    split_k = 4 if n < 20000 else 2  # qkv 5120 -> 15360, gate_up 5120 -> 27648
    if m <= 2 or (m <= 8 and n >= 20000):
        return Config("mma", block_n=64, num_warps=2, unroll=2, split_k=split_k)
    if m <= 8:
        return Config("mma", block_n=64, num_warps=2, split_k=split_k)
    return Config("mma", block_n=128, num_warps=2, unroll=2, split_k=split_k)


def _disable_mma(err: MmaLayoutError) -> None:
    global _mma_enabled
    _mma_enabled = False
    warnings.warn(f"{err}; decode falls back to the CUDA-core GEMV and tl.dot", stacklevel=3)


def _gemv_config(m: int, n: int, k: int) -> Config:
    """GEMV launch per decode shape: graph sweeps on the H100 and the H200 (us: H200 / H100).

    The H100's own best for gate_up (unroll 2) and qkv at M=2 (unroll 2, one warp) were 9 to 20%
    slower on the H200 than the choices below, which are within 3% of the best on the H100.
    """
    if m <= 2 and (k > 8192 or n <= 8192):
        # down 13824 -> 5120: 21.4 / 24.5 us (M=2 27.2 / 28.9); o 5120 -> 5120: 10.0 / 11.2
        return Config("gemv", 1, 16, num_warps=4, unroll=8, prefetch=True)
    if m == 1 or (m == 2 and n >= 20000):
        # M=1 qkv 5120 -> 15360: 18.4 / 20.6 us; gate_up 5120 -> 27648: 30.0 / 34.9 (M=2 40.3 / 45.5)
        return Config("gemv", 1, 8, num_warps=1, unroll=4, prefetch=True)
    # M=2 qkv: 27.3 / 28.1 us; M 3..4: qkv 38.0 / 40.1, o 16.7 / 16.9, gate_up 62.9 / 65.4,
    # down 39.6 / 40.1
    return Config("gemv", 1, 8, num_warps=2, unroll=4, prefetch=True)


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


def _check(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    group_size: int,
):
    assert x.dim() == 2 and x.dtype == torch.float16, (
        f"x must be fp16 [M, K], got {x.dtype} {tuple(x.shape)}"
    )
    assert x.stride(1) == 1, f"x rows must be contiguous, strides {x.stride()}"
    m, k = x.shape
    n = check_weight(qweight, scales, qzeros, group_size, k)
    return m, n, k


def gemm_split(cfg: Config, k: int) -> tuple[int, int]:
    """The split-K and unroll a tensor-core launch uses: each falls back to 1 where the K chunks
    do not divide by it (down's 108 chunks by 8, say)."""
    split_k = cfg.split_k if (k // KCHUNK) % cfg.split_k == 0 else 1
    unroll = cfg.unroll if (k // KCHUNK // split_k) % cfg.unroll == 0 else 1
    return split_k, unroll


def awq_gemm(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    group_size: int,
    config: Config | None = None,
    partial: bool = False,
) -> torch.Tensor | PartialSums:
    """``x @ W^T`` with W in the kernel layout; ``config`` overrides the tuned choice (tests).

    ``partial``: a launch that splits K returns its splits' fp32 partial sums unadded
    (core/partial_sums.py), for an op that adds them as it reads; one that does not returns y.
    """
    # x [M, K] fp16 · qweight [N, K/8] int32 · scales [K/G, N] fp16 · qzeros [K/G, N/8] int32
    #   -> [M, N] fp16
    m, n, k = _check(x, qweight, scales, qzeros, group_size)
    # mma.sync needs an Ampere or newer GPU
    cfg = config or default_config(m, n, k, group_size, mma=mma_supported(x.device))
    if cfg.path == "mma":
        if x.device.type == "cpu" and config is None:  # interpreter: few, large programs
            cfg = Config("mma", block_n=64, num_warps=4, split_k=cfg.split_k)
        try:
            return awq_mma_gemv(
                x, qweight, scales, qzeros, group_size,
                tiles=cfg.block_n // 16, num_warps=cfg.num_warps, split_k=cfg.split_k, prefetch=cfg.prefetch,
                unroll=cfg.unroll, partial=partial,
            )  # fmt: skip
        except MmaLayoutError as err:
            if config is not None:
                raise
            _disable_mma(err)
            cfg = default_config(m, n, k, group_size)
    if cfg.path == "gemv":
        if x.device.type == "cpu" and config is None:  # interpreter: few, large programs
            cfg = Config("gemv", 1, 64, unroll=4)
        return awq_gemv(
            x, qweight, scales, qzeros, group_size,
            block_n=cfg.block_n, unroll=cfg.unroll, split_k=cfg.split_k, num_warps=cfg.num_warps,
            prefetch=cfg.prefetch, partial=partial,
        )  # fmt: skip
    if cfg.path == "dequant":
        return F.linear(x, awq_dequantize(qweight, scales, qzeros, group_size, cfg))
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
