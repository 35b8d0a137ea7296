"""Triton W4A16 decode on the tensor cores: ``mma.sync`` issued from inline PTX on registers that
Triton loads straight in the operand layout (no shared memory, no layout conversion).

Why: the CUDA-core GEMV (plugins/awq/gemv.py) and ``tl.dot`` (plugins/awq/kernels.py) spend
~34 SASS instructions per int32 of weights (bench/sass.py), and session 5's ncu found the decode
kernels bound by issuing them (bench/results/ncu-decode-gemm-h200.md). Here the multiply-adds of
up to 16 batch rows are one or two tensor-core instructions per int32 and ~15 instructions in
all; per 60 layers in CUDA graphs on an H200, M=1 4.77 -> 4.29 ms, M=16 8.24 -> 6.10 ms
(bench/results/gemv-graph-h200-mma.csv).

The weight layout (plugins/awq/layout.py) is already what an m16n8k16 operand wants. In a
128-wide K chunk int32 column c holds in nibble slot j the value at k = 16 j + c, so two adjacent
columns c, c + 1 give, for each slot j, the two K-adjacent fp16 values of one A-fragment
register: ``prmt`` puts byte r of both columns into the two halves of one register, and
``lop3 & 0x000F000F | 0x64006400`` (slot 2r) or ``& 0x00F000F0`` (slot 2r + 1, 16 q) makes them
fp16 1024 + q; ``sub`` (or ``fma`` by 1/16) leaves q - z exactly. K-tile p of the mma is slot p.

Each program owns ``TILES`` tiles of 16 weight rows, ``TPW`` per warp. Its tensors have the
shape [8, TILES, 2, 16] (row g within a half tile, tile, half h, column c; weight row
16 tile + 8 h + g) and, loaded 16 bytes per thread, the blocked layout sizePerThread
[1, 1, 1, 4], threadsPerWarp [8, 1, 1, 4], warpsPerCTA [1, warps, 1, 1], order [3, 0, 1, 2]:
lane 4 g + t holds columns 4t..4t+3 of rows g and g + 8 of its tiles, the m16n8k16 fragment of
lane (group g, thread t) once logical k (2t, 2t+1, 2t+8, 2t+9) is mapped to columns (4t, 4t+1,
4t+2, 4t+3). x is loaded the same way (8-byte vectors, the same x for every tile) holding
x[8 h + g, 16 p + c], so the B fragments of batch rows 0..7 (and 8..15) sit in the same lane's
registers and feed the mma of each of its tiles. Triton picks that layout itself (from the
loads' shapes and contiguity); ``mma_layout_ok`` checks the compiled kernel got it before the
first launch of each variant (kernels.py falls back to the other decode paths otherwise).

A lane's 8 TPW elements (pack = 8 TPW, ordered column j, tile, half h) carry the fp32
accumulators of weight row 8 h + g and batch row b = 8 (j // 2) + 2t + j % 2 (the mma's C
fragment), so the epilogue stores element (g, tile, h, c) to y[b, n]. Scales are applied per
chunk in fp32 (GROUP 128), so the tensor cores sum exact (q - z) * x. Rows past N and batch rows
past M load a valid row again instead of masking (no zero-filling); they are never stored.

Split-K (grid axis 1) is deterministic (plugins/awq/split_k.py): each split stores its fp32
partial sums, and the last split of a row block to arrive adds them in split order and writes y.
Measured the same speed as fp16 atomics into a zeroed y
(bench/results/gemv-graph-h200-deterministic.csv). With ``partial`` (``PARTIAL``;
kernels.split_k_sum=consumer) the splits store their partial sums as [S, M, N] and exit, and the
op that reads y adds them as it loads them (core/partial_sums.py): no arrival, no second pass.

Under ``TRITON_INTERPRET=1`` (CPU) inline PTX cannot run: ``ASM=False`` computes the same
accumulators in plain Triton (same grid, split-K, clamped loads and epilogue).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.fragment_order import FragmentOrder
from core.ops.pdl import pdl_launch
from core.ops.triton_fragment_order import fragment_offset
from core.ops.triton_pdl import pdl_release, pdl_wait
from core.partial_sums import PartialSums
from plugins.awq.dequant import group_params
from plugins.awq.gemv import use_inline_asm
from plugins.awq.mma_ptx import (
    CONSTRAINTS_1,
    CONSTRAINTS_2,
    CONSTRAINTS_4,
    PTX_N8_1,
    PTX_N8_2,
    PTX_N8_4,
    PTX_N16_1,
    PTX_N16_2,
    PTX_N16_4,
    MmaLayoutError,
    mma_layout_ok,
)
from plugins.awq.reference import KCHUNK, PIECE
from plugins.awq.split_k import arrival_counters, arrive, sum_splits

# Batch rows one m16n8k16 pair covers (two n8 tiles); up to 8 one mma per K tile.
MMA_MAX_M = 16
# Larger decode batches run as blocks of 16 rows, each block its own programs over the same
# weight tiles (dequantized once per block; the second block reads the weights from L2).
MMA_DECODE_MAX_M = 32
MMA_GROUP = 128  # the per-chunk scale in fp32 needs one quantization group per 128-wide chunk


@triton.jit
def _mma_chunk(acc, q, chunk, last, s_ptr, z_ptr, nl, N, x_ptrs, x_ptr, stride_xm, M,
               TILES: tl.constexpr, TPW: tl.constexpr, XB: tl.constexpr, ASM: tl.constexpr,
               XFRAG: tl.constexpr):  # fmt: skip
    """Add one 128-wide K chunk (q: its [8, T, 2, 16] int32 tile) to the accumulators."""
    live = chunk < last
    chunk = tl.minimum(chunk, last - 1)
    s, zz = group_params(s_ptr, z_ptr, chunk, nl, None, N)  # [8, T, 2, 1] fp16 each
    s = tl.where(live, s, 0.0)
    if ASM:
        nz = 960.0 - zz  # -(64 + z), exact in fp16
        # K tile p's x: row-major at 16 p; in fragment order (core/fragment_order.py) tiles 2q,
        # 2q + 1 side by side, 512 elements per q (a chunk is 2048 there, 128 row-major)
        if XFRAG:
            xp = x_ptrs + chunk * 2048
            PAIR: tl.constexpr = 512
            NEXT: tl.constexpr = 4
        else:
            xp = x_ptrs + chunk * 128
            PAIR: tl.constexpr = 32
            NEXT: tl.constexpr = 16
        x0 = tl.load(xp)
        x1 = tl.load(xp + NEXT)
        x2 = tl.load(xp + PAIR)
        x3 = tl.load(xp + PAIR + NEXT)
        x4 = tl.load(xp + 2 * PAIR)
        x5 = tl.load(xp + 2 * PAIR + NEXT)
        x6 = tl.load(xp + 3 * PAIR)
        x7 = tl.load(xp + 3 * PAIR + NEXT)
        if TPW == 1:
            cons: tl.constexpr = CONSTRAINTS_1
            ptx: tl.constexpr = PTX_N8_1 if XB == 8 else PTX_N16_1
        elif TPW == 2:
            cons: tl.constexpr = CONSTRAINTS_2
            ptx: tl.constexpr = PTX_N8_2 if XB == 8 else PTX_N16_2
        else:
            cons: tl.constexpr = CONSTRAINTS_4
            ptx: tl.constexpr = PTX_N8_4 if XB == 8 else PTX_N16_4
        acc = tl.inline_asm_elementwise(
            ptx,
            cons,
            [acc, q, s, zz, nz, x0, x1, x2, x3, x4, x5, x6, x7],
            dtype=tl.float32,
            is_pure=True,
            pack=8 * TPW,
        )
    else:  # the same sums in plain Triton: element (g, t, h, c) is weight row n, batch row b
        j5 = tl.arange(0, 8)[None, None, None, :, None]  # slot j of column c': k = 16 j + c'
        zf = zz.to(tl.float32)[:, :, :, :, None] - 1024.0
        w = ((q[:, :, :, None, :] >> (4 * j5)) & 0xF).to(tl.float32) - zf  # [8, T, 2, 8, 16]
        w = tl.reshape(w, (8, TILES, 2, 128))[:, :, :, None, :]  # k in natural order
        b5 = tl.minimum(_batch_row(tl.arange(0, 16)), M - 1)[None, None, None, :, None]
        kk = tl.arange(0, 128)[None, None, None, None, :]
        if XFRAG:
            xs = tl.load(x_ptr + fragment_offset(b5, chunk * 128 + kk, stride_xm))
        else:
            xs = tl.load(x_ptr + b5 * stride_xm + chunk * 128 + kk)  # [1, 1, 1, 16, 128]
        acc += s.to(tl.float32) * tl.sum(w * xs.to(tl.float32), axis=4)
    return acc


@triton.jit
def _row_block_sums(x_ptr, qw_ptr, s_ptr, z_ptr, M, N, K, stride_xm, rb, first, last,
                    TILES: tl.constexpr, TPW: tl.constexpr, XB: tl.constexpr, ASM: tl.constexpr,
                    UNROLL: tl.constexpr, PREFETCH: tl.constexpr, USE_PDL: tl.constexpr,
                    XFRAG: tl.constexpr):  # fmt: skip
    """fp32 sums of row block ``rb`` (TILES 16-row tiles) over K chunks first .. last - 1, as
    [8, T, 2, 16] accumulators (the mma's C fragments)."""
    g4 = tl.arange(0, 8)[:, None, None, None]
    t4 = tl.arange(0, TILES)[None, :, None, None]
    h4 = tl.arange(0, 2)[None, None, :, None]
    c4 = tl.arange(0, 16)[None, None, None, :]
    n4 = rb * (TILES * 16) + t4 * 16 + h4 * 8 + g4  # [8, T, 2, 1] weight row
    # Rows past N and batch rows past M load row N - 1 and M - 1 again (no masked loads, no
    # zero-filling): their sums land in accumulators the epilogue never stores.
    nl = tl.minimum(n4, N - 1)
    bl = tl.minimum(h4 * 8 + g4, M - 1)  # batch row of the x each element holds (B fragment)
    # K % 128 == 0: rows start 64-byte aligned, q loads are 16-byte vectors (4 columns per lane)
    qw_ptrs = qw_ptr + nl * tl.multiple_of(K // 8, 16) + c4  # [8, T, 2, 16]
    # 8-byte x vectors: four columns per lane, the layout of q (contiguity 4, not 16)
    cx = tl.max_contiguous(tl.arange(0, 16), 4)[None, None, None, :]
    if XFRAG:  # fragment order (core/fragment_order.py): lane (g, t) at (h * 8 + g) * 32 + t * 8
        c1 = tl.arange(0, 16)
        cf = tl.max_contiguous(tl.multiple_of((c1 // 4) * 8 + c1 % 4, 4), 4)[None, None, None, :]
        x_ptrs = tl.broadcast_to(x_ptr + (h4 * 8 + g4) * 32 + cf, (8, TILES, 2, 16))
    else:
        x_ptrs = tl.broadcast_to(x_ptr + bl * stride_xm + cx, (8, TILES, 2, 16))
    n_chunks = K // 128
    acc = tl.zeros((8, TILES, 2, 16), dtype=tl.float32)
    # chunks past the range's end load a valid tile (any) and are weighed with scale 0
    if PREFETCH:  # register double-buffering: the next iteration's tiles fly during this one
        p0 = _load_w(qw_ptrs + tl.minimum(first, n_chunks - 1) * 16)
        if UNROLL >= 2:
            p1 = _load_w(qw_ptrs + tl.minimum(first + 1, n_chunks - 1) * 16)
        if UNROLL >= 4:
            p2 = _load_w(qw_ptrs + tl.minimum(first + 2, n_chunks - 1) * 16)
            p3 = _load_w(qw_ptrs + tl.minimum(first + 3, n_chunks - 1) * 16)
    pdl_wait(USE_PDL)  # PDL: the first weight tiles (no kernel writes weights) are in flight
    for chunk in range(first, last, UNROLL):
        # every tile's loads before the first one's math: UNROLL tiles in flight per warp
        if PREFETCH:
            nxt = chunk + UNROLL
            q0 = p0
            p0 = _load_w(qw_ptrs + tl.minimum(nxt, n_chunks - 1) * 16)
            if UNROLL >= 2:
                q1 = p1
                p1 = _load_w(qw_ptrs + tl.minimum(nxt + 1, n_chunks - 1) * 16)
            if UNROLL >= 4:
                q2 = p2
                p2 = _load_w(qw_ptrs + tl.minimum(nxt + 2, n_chunks - 1) * 16)
                q3 = p3
                p3 = _load_w(qw_ptrs + tl.minimum(nxt + 3, n_chunks - 1) * 16)
        else:
            q0 = _load_w(qw_ptrs + chunk * 16)  # [8, T, 2, 16] int32
            if UNROLL >= 2:
                q1 = _load_w(qw_ptrs + tl.minimum(chunk + 1, n_chunks - 1) * 16)
            if UNROLL >= 4:
                q2 = _load_w(qw_ptrs + tl.minimum(chunk + 2, n_chunks - 1) * 16)
                q3 = _load_w(qw_ptrs + tl.minimum(chunk + 3, n_chunks - 1) * 16)
        acc = _mma_chunk(acc, q0, chunk, last, s_ptr, z_ptr, nl, N, x_ptrs, x_ptr, stride_xm, M, TILES, TPW, XB, ASM, XFRAG)  # fmt: skip
        if UNROLL >= 2:
            acc = _mma_chunk(acc, q1, chunk + 1, last, s_ptr, z_ptr, nl, N, x_ptrs, x_ptr, stride_xm, M, TILES, TPW, XB, ASM, XFRAG)  # fmt: skip
        if UNROLL >= 4:
            acc = _mma_chunk(acc, q2, chunk + 2, last, s_ptr, z_ptr, nl, N, x_ptrs, x_ptr, stride_xm, M, TILES, TPW, XB, ASM, XFRAG)  # fmt: skip
            acc = _mma_chunk(acc, q3, chunk + 3, last, s_ptr, z_ptr, nl, N, x_ptrs, x_ptr, stride_xm, M, TILES, TPW, XB, ASM, XFRAG)  # fmt: skip
    return acc


@triton.jit
def _store_y(y_ptr, acc, rb, M, N, stride_ym, TILES: tl.constexpr):
    """Row block ``rb`` of y [M, N] (fp16 y, or fp32 partial sums) from the accumulators."""
    g4 = tl.arange(0, 8)[:, None, None, None]
    t4 = tl.arange(0, TILES)[None, :, None, None]
    h4 = tl.arange(0, 2)[None, None, :, None]
    n4 = rb * (TILES * 16) + t4 * 16 + h4 * 8 + g4  # [8, T, 2, 1]
    b = _batch_row(tl.arange(0, 16)[None, None, None, :])  # [1, 1, 1, 16]
    out = acc.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + b * stride_ym + n4, out, mask=(n4 < N) & (b < M))


@triton.jit
def _tile_index(TILES: tl.constexpr):
    """[8, T, 2, 16] element index of an accumulator tile (its offset in a partial-sum slot)."""
    g4 = tl.arange(0, 8)[:, None, None, None]
    t4 = tl.arange(0, TILES)[None, :, None, None]
    h4 = tl.arange(0, 2)[None, None, :, None]
    c4 = tl.arange(0, 16)[None, None, None, :]
    return ((g4 * TILES + t4) * 2 + h4) * 16 + c4


@triton.jit
def _awq_mma_gemv_kernel(
    x_ptr,
    qw_ptr,
    s_ptr,
    z_ptr,
    y_ptr,
    ws_ptr,
    cnt_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_ym,
    TILES: tl.constexpr,
    TPW: tl.constexpr,
    XB: tl.constexpr,
    SPLIT: tl.constexpr,
    ASM: tl.constexpr,
    UNROLL: tl.constexpr = 1,
    PREFETCH: tl.constexpr = False,
    USE_PDL: tl.constexpr = False,
    PARTIAL: tl.constexpr = False,
    BATCH_BLOCKS: tl.constexpr = 1,
    XFRAG: tl.constexpr = False,
):
    lin = _tile_index(TILES)
    n_chunks = K // 128
    # grid (row blocks x batch blocks, splits): program (rb * BATCH_BLOCKS + bb, k) sums split k
    # of row block rb for batch rows 16 bb .. 16 bb + 15; the batch blocks of one row block are
    # neighbours in launch order, so the second one's weight loads find them in L2
    tile_id = tl.program_id(0)
    rb = tile_id // BATCH_BLOCKS
    bb = tile_id % BATCH_BLOCKS
    pid_k = tl.program_id(1)
    per_split = tl.cdiv(n_chunks, tl.num_programs(1))
    first = pid_k * per_split
    last = tl.minimum(first + per_split, n_chunks)
    rows = M
    if BATCH_BLOCKS > 1:
        x_ptr += bb * 16 * stride_xm
        rows = tl.minimum(M - bb * 16, 16)
    acc = _row_block_sums(x_ptr, qw_ptr, s_ptr, z_ptr, rows, N, K, stride_xm, rb, first, last,
                          TILES, TPW, XB, ASM, UNROLL, PREFETCH, USE_PDL, XFRAG)  # fmt: skip
    pdl_release(USE_PDL)  # after the main loop, as in the GEMV (plugins/awq/gemv.py)
    if not SPLIT:
        _store_y(y_ptr + bb * 16 * stride_ym, acc, rb, rows, N, stride_ym, TILES)
    elif PARTIAL:  # the op that reads y adds the splits (core/partial_sums.py): ws [S, M, N]
        _store_y(ws_ptr + pid_k * M * N + bb * 16 * N, acc, rb, rows, N, N, TILES)
    else:  # split-K: the last split to finish adds all partial sums, in split order
        if arrive(acc, ws_ptr, cnt_ptr, tile_id, tl.num_programs(0), lin, TILES * 256):
            total = sum_splits(acc, ws_ptr, cnt_ptr, tile_id, tl.num_programs(0), lin, TILES * 256)
            _store_y(y_ptr + bb * 16 * stride_ym, total, rb, rows, N, stride_ym, TILES)


@triton.jit
def _load_w(ptrs):
    """A weight tile, marked first to evict from L2: each weight is read once per step, while x,
    scales and the split-K partials are read again. H200, per 60 layers in CUDA graphs: M=1
    4.48 -> 4.23 ms, M=8 5.14 -> 4.94, M=16 6.08 -> 5.89 (".cg", skipping L1, changed nothing)."""
    return tl.load(ptrs, eviction_policy="evict_first")


@triton.jit
def _batch_row(c):
    """Batch row of the accumulator at column c = 4t + j: the mma's C fragment (2t, 2t+1, +8)."""
    return ((c % 4) // 2) * 8 + (c // 4) * 2 + c % 2


def awq_mma_gemv(
    x: torch.Tensor | FragmentOrder,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    group_size: int,
    tiles: int = 1,
    num_warps: int | None = None,
    split_k: int = 1,
    asm: bool | None = None,
    prefetch: bool = False,
    unroll: int = 1,
    partial: bool = False,
) -> torch.Tensor | PartialSums:
    """``x @ W^T`` for M <= 32 with mma.sync (inputs checked by kernels._check); past 16 rows
    in blocks of 16 (``BATCH_BLOCKS``).

    # x [M, K] fp16 · qweight [N, K/8] int32 · scales [K/128, N] fp16 · qzeros [K/128, N/8]
    #   -> [M, N] fp16; grid (N / (16 tiles) x M / 16, split_k), tiles / num_warps 16-row tiles
    #   per warp

    ``partial``: with more than one split, return the splits' fp32 partial sums unadded
    (core/partial_sums.py) for the next op to add; with one split, y as always. ``x`` may come
    in fragment order (core/fragment_order.py), as a producer that knew its consumer wrote it.
    """
    assert KCHUNK == 128 and PIECE == 16, "the kernel hard-codes the 128-wide K chunk of layout.py"
    xfrag = isinstance(x, FragmentOrder)
    m, k = x.shape
    if xfrag:
        x = x.buf
    n = qweight.shape[0]
    assert 1 <= m <= MMA_DECODE_MAX_M, (
        f"M={m}: the tensor-core GEMV takes 1 to {MMA_DECODE_MAX_M} rows"
    )
    assert group_size == MMA_GROUP, f"group size {group_size}: the tensor-core GEMV needs 128"
    assert x.stride(1) == 1 and qweight.is_contiguous(), "x rows and qweight must be contiguous"
    num_warps = num_warps or tiles
    tpw = tiles // num_warps  # 16-row tiles per warp (they share each x fragment)
    assert k % KCHUNK == 0 and tiles in (1, 2, 4, 8) and tpw in (1, 2, 4), (k, tiles, num_warps)
    assert tpw * num_warps == tiles, f"tiles={tiles} over {num_warps} warps"
    assert unroll in (1, 2, 4), f"unroll={unroll}"
    split_k = max(1, min(split_k, k // KCHUNK))
    asm = use_inline_asm(x.device) if asm is None else asm
    partial = partial and split_k > 1
    y = torch.empty((m, n), dtype=torch.float16, device=x.device)
    batch_blocks = triton.cdiv(m, MMA_MAX_M)
    row_blocks = triton.cdiv(n, 16 * tiles) * batch_blocks  # output tiles
    grid = (row_blocks, split_k)
    if partial:  # each split's [M, N] fp32 partial sums, for the next op to add
        ws = torch.empty((split_k, m, n), device=x.device)
        counters = ws  # no arrival to count
    else:  # split-K: fp32 partial sums of every split, and one arrival counter per row block
        ws = torch.empty(
            (split_k, row_blocks, 256 * tiles) if split_k > 1 else (1,), device=x.device
        )
        counters = arrival_counters(x.device, row_blocks)
    args = (x, qweight, scales, qzeros, y, ws, counters, m, n, k, x.stride(0), y.stride(0))
    kwargs = dict(
        TILES=tiles, TPW=tpw, XB=8 if m <= 8 else 16, SPLIT=split_k > 1, ASM=asm, UNROLL=unroll,
        PREFETCH=prefetch, PARTIAL=partial, BATCH_BLOCKS=batch_blocks, XFRAG=xfrag,
        **pdl_launch(x), num_warps=num_warps,
    )  # fmt: skip
    if asm:
        _check_layout(args, kwargs, num_warps)
    _awq_mma_gemv_kernel[grid](*args, **kwargs)
    return PartialSums(ws, torch.float16) if partial else y


_checked: set[tuple] = set()


def _check_layout(args: tuple, kwargs: dict, num_warps: int) -> None:
    """Compile once per variant and refuse to run PTX whose lane mapping Triton did not give."""
    key = (args[0].device.index, tuple(sorted(kwargs.items())))
    if key in _checked:
        return
    kernel = _awq_mma_gemv_kernel.warmup(*args, grid=(1,), **kwargs)
    if not mma_layout_ok(kernel.asm["ttgir"], num_warps):
        raise MmaLayoutError(
            f"Triton {triton.__version__} gave the tensor-core GEMV's operands a register layout "
            "other than the one its PTX is written for (plugins/awq/mma_gemv.py); Triton 3.6 "
            '(pip install "torch==2.11.*") gives it'
        )
    _checked.add(key)
