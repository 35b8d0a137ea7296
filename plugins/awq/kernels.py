"""Triton W4A16 kernels for AWQ int4 (fp16 activations, fp32 accumulation, fp16 output).

Weights are in the kernel layout of plugins/awq/layout.py; reference.py is the oracle. Paths:

- ``gemv`` (decode, M <= GEMV_MAX_M): plugins/awq/gemv.py, inline-PTX dequantization and half2
  FMAs on the CUDA cores (a plain-Triton twin under the interpreter).

- ``mma`` (decode, M <= 16, group size 128): plugins/awq/mma_gemv.py, ``mma.sync`` from inline
  PTX on registers loaded in the tensor-core operand layout (a plain-Triton twin under the
  interpreter).
- ``fma``, ``dot``, ``dot_t``, ``tile_dot``, ``tile_fma`` (M up to 64 on tl.dot, M = 1 on the
  CUDA cores): plugins/awq/dot_gemm.py, one tiled kernel walking K in 128-wide chunks.
- ``dequant`` (M > 64): dequantize the whole weight to fp16 [N, K], then cuBLAS ``F.linear``.

Dequantization (the fp16 magic number, exact q - z) is plugins/awq/dequant.py's, shared by every path.

All kernels run under ``TRITON_INTERPRET=1`` on CPU tensors (tests use that).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.fragment_order import FragmentOrder
from core.partial_sums import PartialSums
from plugins.awq.dequant import (
    DEFAULT_TILE,
    awq_dequantize,
    check_weight,
)
from plugins.awq.dot_gemm import awq_dot_gemm
from plugins.awq.gemv import awq_gemv
from plugins.awq.mma_gemv import MMA_DECODE_MAX_M, MMA_GROUP, awq_mma_gemv
from plugins.awq.mma_ptx import MmaLayoutError, mma_supported

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

    Decode needs several programs per SM to keep enough loads in flight: M <= 32 at group size
    128 takes the tensor-core GEMV (plugins/awq/mma_gemv.py, in blocks of 16 rows above 16; not
    with ``mma=False``) except where _mma_config leaves it to the CUDA-core GEMV; otherwise
    M <= GEMV_MAX_M takes the GEMV (narrow rows, the next tile prefetched) and larger decode
    batches tl.dot with split-K. Decode choices come from ``bench/gemv_graph.py`` (times inside
    CUDA graphs, as the engine runs them: bench/results/gemv-graph-h100*.csv and, on the H200,
    gemv-graph-h200*.csv); prefill's from ``bench/kernels.py --sweep``.
    """
    if mma and m <= MMA_DECODE_MAX_M and group_size == MMA_GROUP and _mma_enabled:
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

    M 17-32 run as two 16-row blocks with M=16's launches. In the decode graph at batch 32
    (256/512 tokens, H200) they took the step from 17.66 ms on the tl.dot path to 15.57
    (token_throughput-h200-s14-before/after.log); the best of each shape in the kernel sweep
    (gemv-graph-h200-m32-partial.csv, which has no 128-column tiles: one warp per 32 columns,
    split-K 4, for qkv, o and gate_up) to 16.52 (token_throughput-h200.log).
    """
    if k > 8192:  # down 13824 -> 5120: 9 splits of 12 chunks
        # at M 9-32 too, not prefetch with unroll 1: on an H100 (fragment-order x, partial sums)
        # 23.6 -> 20.2 us at M=16, 35.3 -> 30.9 at M=32 (gemv-operand-prefetch-h100.log), decode
        # step at batch 16 10.40 -> 10.33 ms (token_throughput-h100-s16-down-*); session 6's H200
        # sweep had the two within 4% at M=16, prefetch ahead (gemv-graph-h200-mma-prefetch.csv)
        return Config("mma", block_n=64, num_warps=2, unroll=2, split_k=9)
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


# Let the producers of decode GEMV inputs write them in fragment order (core/fragment_order.py).
# False: row-major everywhere, as before it existed.
FRAGMENT_ORDER = True
# From this many rows on. On an H100, 256/512 tokens (bench/results/token_throughput-h100-s15-
# off/-on): decode step at batch 8 / 16 / 32 8.21 -> 8.04, 10.49 -> 10.35, 17.64 -> 17.11 ms;
# at batch 1 5.91 -> 6.09, likely because row-major x rows past M load row M - 1 again (one
# row's bytes at M = 1) while the fragment buffer's 16 rows are all read (not profiled).
FRAGMENT_MIN_M = 8


def takes_fragment_order(m: int, n: int, k: int, group_size: int, device: torch.device) -> bool:
    """Whether awq_gemm's default launch for [M, K] x [K, N] is the tensor-core GEMV, which
    reads x faster in fragment order (core/fragment_order.py; the producer writes it)."""
    if not FRAGMENT_ORDER or not FRAGMENT_MIN_M <= m <= MMA_DECODE_MAX_M:
        return False
    return default_config(m, n, k, group_size, mma=mma_supported(device)).path == "mma"


def _check(
    x: torch.Tensor | FragmentOrder,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    group_size: int,
):
    assert x.dim() == 2 and x.dtype == torch.float16, (
        f"x must be fp16 [M, K], got {x.dtype} {tuple(x.shape)}"
    )
    assert isinstance(x, FragmentOrder) or x.stride(1) == 1, (
        f"x rows must be contiguous, strides {x.stride()}"
    )
    m, k = x.shape
    n = check_weight(qweight, scales, qzeros, group_size, k)
    return m, n, k


def awq_gemm(
    x: torch.Tensor | FragmentOrder,
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
    ``x`` may be in fragment order (core/fragment_order.py): the tensor-core GEMV reads it as
    it is, every other path gets it back in rows.
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
    if isinstance(x, FragmentOrder):
        x = x.natural()
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
    return awq_dot_gemm(x, qweight, scales, qzeros, group_size, cfg, partial)
