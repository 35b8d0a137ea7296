"""Dequantizing AWQ int4 to fp16: the shared arithmetic of every kernel, and the prefill's
dequantize (int4 -> fp16 [N, K], then cuBLAS; plugins/awq/kernels.py path "dequant").

The fp16 magic number: OR-ing a nibble into the mantissa of 1024.0 (0x6400) gives 1024 + q
exactly; OR-ing 0x64006400 after ``(q >> 4p) & 0x000F000F`` does it for two values (two 16-wide
K slices) per int32 operation. The zero point is unpacked the same way to 1024 + z, so
``(1024 + q) - (1024 + z)`` is exact and ``w = (q - z) * s`` rounds once, as the reference does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from core.ops.pdl import pdl_launch
from core.ops.triton_pdl import pdl_release, pdl_wait
from plugins.awq.reference import KCHUNK, PIECE


class DequantTile(NamedTuple):
    """A dequantize launch: rows and 128-wide K chunks (``unroll``) per program, warps."""

    block_n: int
    num_warps: int
    unroll: int = 1
    path: str = "dequant"


# The prefill dequantize: "tile" builds [block_n, unroll * 128] per program and writes each row
# with one contiguous store; "v1" is the old [32, 128] program with eight 16-wide stores.
# `bench/dequant.py` on an H100, the four internlm-chat-20b shapes per layer: v1 344 us
# (0.78 of copy bandwidth), tile 8 rows x 4 chunks, 2 warps 295 us (0.90; writing the fp16
# weight alone takes 209 us); with cuBLAS at M=256 642 -> 589 us. Tiles of 2 to 16 rows and 2 to
# 8 chunks were within 1% of each other, one chunk per program 2% slower.
DEQUANT_IMPL = "tile"
DEFAULT_TILE = DequantTile(block_n=8, num_warps=2, unroll=4)
_V1 = DequantTile(block_n=32, num_warps=4)
_INTERPRETED = DequantTile(block_n=64, num_warps=4, unroll=4)


@triton.jit
def dequant_piece(q, zz, s, J: tl.constexpr):
    """Slice J (0..7) of a [BN, 16] int32 tile -> fp16 [BN, 16] weights ``(q - z) * s``."""
    v = ((q >> (4 * (J % 4))) & 0x000F000F) | 0x64006400  # two fp16 1024 + q per int32
    if J < 4:
        h = v.to(tl.int16)
    else:
        h = (v >> 16).to(tl.int16)
    return (h.to(tl.float16, bitcast=True) - zz[:, None]) * s[:, None]


@triton.jit
def group_params(s_ptr, z_ptr, g, offs_n, mask_n, N):
    """Scales and 1024 + zero of group g for rows offs_n: two fp16 tensors of offs_n's shape.

    ``mask_n=None``: every row is in bounds (no masked loads, no zero-filling).
    """
    if mask_n is None:
        s = tl.load(s_ptr + g * N + offs_n)
        zi = tl.load(z_ptr + g * (N // 8) + offs_n // 8)
    else:
        s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0)
        zi = tl.load(z_ptr + g * (N // 8) + offs_n // 8, mask=mask_n, other=0)
    zz = (((zi >> ((offs_n % 8) * 4)) & 0xF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
    return s, zz


@triton.jit
def _awq_dequant_kernel(
    qw_ptr, s_ptr, z_ptr, w_ptr, N, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr
):
    # v1 (impl="v1"): one [BN, 128] chunk per program, eight 16-wide stores; kept for the benchmark.
    pid_n = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, 16)
    mask_n = offs_n < N
    q = tl.load(
        qw_ptr + offs_n[:, None] * tl.multiple_of(K // 8, 16) + chunk * 16 + offs_c[None, :],
        mask=mask_n[:, None],
        other=0,
    )
    w_ptrs = w_ptr + offs_n[:, None] * K + chunk * 128 + offs_c[None, :]  # [BN, 16]
    for j in tl.static_range(8):
        if (j * 16) % GROUP == 0:
            s, zz = group_params(s_ptr, z_ptr, (chunk * 128 + j * 16) // GROUP, offs_n, mask_n, N)
        tl.store(w_ptrs + j * 16, dequant_piece(q, zz, s, j), mask=mask_n[:, None])


@triton.jit
def _awq_dequant_tile_kernel(
    qw_ptr,
    s_ptr,
    z_ptr,
    w_ptr,
    N,
    K,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNKS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """W[rows, first*128 : +CHUNKS*128] for BLOCK_N rows: one q load, one store per program.

    The tile is built in natural k order (a broadcast shift over the 8 nibble slots, then a
    reshape), so each row's CHUNKS * 256 bytes leave in one contiguous store that Triton can
    issue as 16-byte vectors, where v1 writes 32 bytes per row per store from small programs.
    """
    pdl_release(USE_PDL)
    # K blocks vary fastest: programs running together fill consecutive bytes of a few rows
    # (W is [N, K] row-major) instead of one column block of many rows. On the H100 that took
    # the four internlm-chat-20b shapes from 0.865 to 0.905 of copy bandwidth, same tiles.
    pid_n = tl.program_id(1)
    first = tl.program_id(0) * CHUNKS  # first 128-wide K chunk of this program
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_j = tl.arange(0, 8)
    # K % 128 == 0 makes every row 64-byte aligned; Triton only knows K % 16 == 0 (16-byte loads)
    q_ptrs = (
        qw_ptr
        + offs_n[:, None] * tl.multiple_of(K // 8, 16)
        + first * 16
        + tl.arange(0, CHUNKS * 16)[None, :]
    )
    q = tl.load(q_ptrs, mask=mask_n[:, None], other=0)  # [BN, CHUNKS * 16] int32
    q = tl.reshape(q, (BLOCK_N, CHUNKS, 1, 16))
    v = ((q >> (4 * offs_j)[None, None, :, None]) & 0xF) | 0x6400  # [BN, CHUNKS, 8, 16]
    chunks = first + tl.arange(0, CHUNKS)
    if GROUP == 128:  # one group per chunk: load each scale once, not once per 16-wide slice
        s, zz = group_params(s_ptr, z_ptr, chunks[None, :], offs_n[:, None], mask_n[:, None], N)
        s4 = s[:, :, None, None]  # [BN, CHUNKS, 1, 1]
        zz4 = zz[:, :, None, None]
    else:  # a 16-wide slice lies in one group (G in 32, 64)
        g = (chunks[:, None] * 128 + offs_j[None, :] * 16) // GROUP  # [CHUNKS, 8]
        s, zz = group_params(
            s_ptr, z_ptr, g[None, :, :], offs_n[:, None, None], mask_n[:, None, None], N
        )
        s4 = s[:, :, :, None]  # [BN, CHUNKS, 8, 1]
        zz4 = zz[:, :, :, None]
    w = (v.to(tl.int16).to(tl.float16, bitcast=True) - zz4) * s4  # k = (first + i)*128 + j*16 + c
    w = tl.reshape(w, (BLOCK_N, CHUNKS * 128))  # natural k order
    offs_k = first * 128 + tl.arange(0, CHUNKS * 128)
    pdl_wait(USE_PDL)  # W's memory may be a buffer the previous kernel still reads
    tl.store(w_ptr + offs_n[:, None] * K + offs_k[None, :], w, mask=mask_n[:, None])


def check_weight(
    qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, group_size: int, k: int
) -> int:
    """Asserts the kernel layout of an [N, K] weight (layout.py); returns N."""
    assert KCHUNK == 128 and PIECE == 16, "kernels hard-code the 128-wide K chunk of layout.py"
    n = qweight.shape[0]
    assert qweight.dtype == torch.int32 and qweight.is_contiguous(), (
        "qweight must be contiguous int32"
    )
    assert tuple(qweight.shape) == (n, k // 8), (
        f"qweight {tuple(qweight.shape)}, expected [N, K/8] = [{n}, {k // 8}]"
    )
    assert k % KCHUNK == 0 and group_size in (32, 64, 128), (
        f"K={k} must divide by 128, G={group_size}"
    )
    assert scales.dtype == torch.float16 and scales.is_contiguous(), (
        "scales must be contiguous fp16"
    )
    assert tuple(scales.shape) == (k // group_size, n), (
        f"scales {tuple(scales.shape)}, expected [{k // group_size}, {n}]"
    )
    assert qzeros.dtype == torch.int32 and qzeros.is_contiguous(), "qzeros must be contiguous int32"
    assert tuple(qzeros.shape) == (k // group_size, n // 8), (
        f"qzeros {tuple(qzeros.shape)}, expected [{k // group_size}, {n // 8}]"
    )
    return n


def awq_dequantize(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    group_size: int,
    config: DequantTile | None = None,
    impl: str = DEQUANT_IMPL,
) -> torch.Tensor:
    """Kernel layout -> fp16 W [N, K] (for cuBLAS prefill), bit-identical to ``dequantize_kernel``.

    ``impl`` "tile" (default): [block_n, unroll * 128] per program, one store per row; "v1": the
    old [block_n, 128] programs with eight 16-wide stores (bench/dequant.py times both).
    ``config`` (kernels.Config, path "dequant") overrides DEFAULT_TILE; v1 reads block_n and num_warps only.
    """
    # qweight [N, K/8] int32 · scales [K/G, N] fp16 · qzeros [K/G, N/8] int32 -> W [N, K] fp16
    # grid (K / (128 * chunks), cdiv(N, block_n)); v1: (cdiv(N, block_n), K / 128)
    k = qweight.shape[1] * 8
    n = check_weight(qweight, scales, qzeros, group_size, k)
    assert impl in ("tile", "v1"), f"unknown dequantize impl {impl!r}"
    cfg = config or (_V1 if impl == "v1" else DEFAULT_TILE)
    if qweight.device.type == "cpu" and config is None and impl == "tile":
        cfg = _INTERPRETED  # the interpreter: few, large programs
    assert getattr(cfg, "path", "dequant") == "dequant", f"not a dequantize config: {cfg}"
    w = torch.empty((n, k), dtype=torch.float16, device=qweight.device)
    if impl == "v1":
        grid = (triton.cdiv(n, cfg.block_n), k // KCHUNK)
        _awq_dequant_kernel[grid](
            qweight, scales, qzeros, w, n, k,
            GROUP=group_size, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
        )  # fmt: skip
        return w
    chunks = cfg.unroll
    assert chunks >= 1 and chunks & (chunks - 1) == 0, f"unroll (chunks) {chunks}: a power of 2"
    while (k // KCHUNK) % chunks:  # a program takes whole chunks: down's 108 do not divide by 8
        chunks //= 2
    grid = (k // (KCHUNK * chunks), triton.cdiv(n, cfg.block_n))  # K blocks fastest (kernel)
    _awq_dequant_tile_kernel[grid](
        qweight, scales, qzeros, w, n, k,
        GROUP=group_size, BLOCK_N=cfg.block_n, CHUNKS=chunks, **pdl_launch(qweight),
        num_warps=cfg.num_warps,
    )  # fmt: skip
    return w
