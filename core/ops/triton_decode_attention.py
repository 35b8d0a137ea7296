"""Triton split-KV (flash-decoding) attention for decode steps: one new token per sequence.

A batch of one sequence has only H (40) query rows, far too few programs for 132 SMs if each
walked its whole context. So the context is cut into ``num_splits`` pieces: grid (H, B, S),
each program runs an online softmax over its piece and writes an unnormalised partial
(acc [D], running max m, sum l). Heads are the fastest grid axis, so programs running side by
side read neighbouring 256-byte rows of the same cache tokens ([NB, BS, Hk, D] keeps a token's
heads together); against (B, H, S) order this measured the same on an H100
(bench/results/ops-H100-80GB-HBM3.md). The cache is addressed through its block, token and
head strides (paged_cache_shapes.check_cache_strides).

Inside a program the math is two ``tl.dot`` per tile of BLOCK_N tokens, on a 16-row query tile
whose row 0 is the head's query: an elementwise multiply-and-sum did the same arithmetic on the
CUDA cores but reduced across warps twice per tile, and Triton did not pipeline its loads; the
dot form reaches 0.9 of copy bandwidth at batch 16 (constants below). With grouped-query
attention each program still serves one query head (a KV head's tiles are read once per query
head of its group).

Merging the S partials of a (sequence, head) is fused into the same kernel (``FUSED_REDUCE``):
after storing its partial, each program bumps an int32 arrival counter for its (b, h) with an
acq_rel atomic (releasing its partial, acquiring the others'); the program that arrives last
merges all S partials, writes the output and puts the counter back to 0. That saves a second
launch of a tiny kernel per layer, a visible share of a batch-1 step. The counters live in a
per-device buffer that outlives every call (``_counters``), so a CUDA-graph replay needs no
memset. ``fused=False`` keeps the old pair of kernels (a split kernel, then a reduce kernel
with grid (H, B)) for the benchmark to time against.

CUDA-graph safety: the grid depends only on B, H and ``block_tables.shape[1]`` (static in graph
mode); each program reads its sequence's live length from ``context_lens`` on the device and
sizes its piece from it (``cdiv(ctx, S)`` rounded up to the tile), so every live context is spread
over all S splits whatever its length, and splits past the end write an empty partial.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from core.ops.paged_cache_shapes import check_paged_cache
from core.ops.pdl import pdl_launch
from core.ops.triton_partial_sums import input_args, load_input
from core.ops.triton_pdl import pdl_start
from core.ops.triton_rotary import check_rotary
from core.partial_sums import PartialSums, total

# Context tokens per inner step of a split program, its warps and pipeline stages, and the
# programs per SM that the split count aims for at small batch. The tl.dot formulation (below)
# against the previous elementwise one (BLOCK_N 64, register prefetch), H200, us per layer in
# CUDA graphs (bench/ops.py): batch 16 x 512 context 58.1 -> 43.8 (0.68 -> 0.91 of copy
# bandwidth), 32 x 512 105.1 -> 84.1, 16 x 1024 109.0 -> 82.7, 64 x 1024 369 -> 318; BLOCK_N 32
# with 4 warps was best or within 5% of best at every size; 8 warps lost up to 40%; stages 3
# and 4 the same, 2 up to 3% slower. When the context is split (small batches), 64-token tiles
# win: batch 1 x 256 / 1024 / 4096 context 7.9 / 12.3 / 26.0 us against 8.1 / 13.7 / 31.5 for
# 32 (bench/results/ops-decode-sweep-h200.log).
BLOCK_N = 32
SPLIT_BLOCK_N = 64
NUM_WARPS = 4
NUM_STAGES = 3
# 2, not 4: in the internlm-chat-20b decode graph at context 512 (H100, one process), batch 8
# then runs unsplit (320 programs) at 8.58 ms against 8.71 with 2 splits, batch 1 on 7 splits
# at 6.16 against 6.18 with 14 (1 per SM: 6.31); batch 16 runs unsplit either way
# (bench/results/decode-rope-attention-h100.log).
PROGRAMS_PER_SM = 2
MAX_SPLITS = 64
QROWS = tl.constexpr(16)  # rows of the query tile: tl.dot's smallest M
# Merge the partials in the split kernel (last arriver) rather than in a second kernel: on an
# H100 at batch 1, S=14, 0.8-1.7 us less per layer (11.1 vs 11.9 us at 256 context, 21.8 vs
# 22.5 at 1024, 52.6 vs 54.3 at 4096; bench/ops.py "triton-fused" vs "triton-2kernel" rows).
# With the tl.dot split kernel on an H200 it is no longer clearly ahead: fused / two kernels
# 8.4 / 6.9 us at 256 context, 11.9 / 11.7 at 1024, 25.7 / 26.0 at 4096
# (bench/results/ops-decode-b1-h200.log). End to end it is a wash: the decode graph at context
# 512 on an H100 took 6.18 / 8.71 ms at batch 1 / 8 fused, 6.19 / 8.69 with the second kernel
# (bench/results/decode-rope-attention-h100.log).
FUSED_REDUCE = True
# Arrival counters allocated at least this many at a time (256 KiB): B * H of them are needed,
# and one buffer then serves every batch size the engine captures.
MIN_COUNTERS = 1 << 16


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter: behave as on an H100
    return torch.cuda.get_device_properties(device).multi_processor_count


def num_splits(batch: int, num_heads: int, max_context_len: int, device: torch.device) -> int:
    """Splits per (sequence, head), from static sizes only (never the live context)."""
    want = triton.cdiv(PROGRAMS_PER_SM * _num_sms(device), batch * num_heads)
    return max(1, min(want, triton.cdiv(max_context_len, SPLIT_BLOCK_N), MAX_SPLITS))


# every counter buffer ever made, per device, newest last: a CUDA graph keeps the address of the
# one it was captured with, so a buffer is never freed, even once a larger one replaces it
_COUNTERS: dict[torch.device, list[torch.Tensor]] = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """At least ``n`` int32 arrival counters, all 0 between kernels (the last arriver resets its
    own). Made with torch.zeros: inside a graph capture the memset is captured too, which only
    re-zeroes counters that are already 0 on each replay of that graph."""
    bufs = _COUNTERS.setdefault(device, [])
    if not bufs or bufs[-1].numel() < n:
        size = max(MIN_COUNTERS, triton.next_power_of_2(n))
        bufs.append(torch.zeros(size, dtype=torch.int32, device=device))
    return bufs[-1]


@triton.jit
def _merge_splits(
    part_acc_ptr, part_ml_ptr, out_ptr, bh, dst_off, head_dim, num_splits,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # the S partials of row bh = b * H + h -> out[b, h]; ".cg" reads from L2, past any stale L1
    # line (the fused kernel reads partials that other SMs wrote during this launch)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < num_splits
    offs_d = tl.arange(0, BLOCK_D)
    part = bh * num_splits + offs_s  # (BS,)
    m = tl.load(part_ml_ptr + part * 2, mask=mask_s, other=-float("inf"), cache_modifier=".cg")
    l_sum = tl.load(part_ml_ptr + part * 2 + 1, mask=mask_s, other=0.0, cache_modifier=".cg")
    # empty splits carry m = -inf; a floor keeps exp2 finite when every split is empty
    m_max = tl.maximum(tl.max(m, axis=0), -1e30)
    w = tl.exp2(m - m_max)  # (BS,)
    den = tl.sum(w * l_sum, axis=0)
    acc_ptrs = part_acc_ptr + part[:, None] * BLOCK_D + offs_d[None, :]  # (BS, BD)
    acc = tl.load(acc_ptrs, mask=mask_s[:, None], other=0.0, cache_modifier=".cg")
    num = tl.sum(w[:, None] * acc, axis=0)  # (BD,)
    out = num / tl.where(den > 0, den, 1.0)
    tl.store(out_ptr + dst_off + offs_d, out.to(out_ptr.dtype.element_ty), mask=offs_d < head_dim)


@triton.jit
def _rotated_rows(src, cos_row, sin_row, rows_mask, head_dim, stride_split,
                  BLOCK_D: tl.constexpr, SPLITS: tl.constexpr, DTYPE: tl.constexpr):  # fmt: skip
    """(16, BD) tile whose rows in ``rows_mask`` hold the head at ``src`` (a tensor row, or
    SPLITS partial sums of it) rotated rotate-half (core/ops/triton_rotary.py's arithmetic)."""
    half = head_dim // 2
    offs_d = tl.arange(0, BLOCK_D)
    first = offs_d < half
    partner = tl.where(first, offs_d + half, offs_d - half)
    pair = tl.where(first, offs_d, offs_d - half)  # index into cos / sin [D/2]
    mask = rows_mask[:, None] & (offs_d < head_dim)[None, :]
    zero = tl.arange(0, 16)[:, None] * 0  # (16, 1): every row reads the same head
    x = load_input(src + zero + offs_d[None, :], mask, stride_split, SPLITS, DTYPE).to(tl.float32)
    xp = load_input(src + zero + partner[None, :], mask, stride_split, SPLITS, DTYPE)
    xp = xp.to(tl.float32)
    c = tl.load(cos_row + pair, mask=offs_d < head_dim, other=0.0)[None, :]
    s = tl.load(sin_row + pair, mask=offs_d < head_dim, other=0.0)[None, :]
    return tl.where(first[None, :], x * c - xp * s, x * c + xp * s).to(DTYPE)


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr,
    out_ptr, part_acc_ptr, part_ml_ptr, counter_ptr,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, stride_cb, stride_cs, stride_ch,
    scale_log2, num_kv_groups, head_dim, num_splits,
    k_ptr, v_ptr, cos_ptr, sin_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_ct, stride_split,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr, DIRECT: tl.constexpr, FUSED: tl.constexpr, USE_PDL: tl.constexpr = False,
    ROPE: tl.constexpr = False, SPLITS: tl.constexpr = 0,
):  # fmt: skip
    # ROPE: q, k, v are the step's unrotated projections (tensors, or SPLITS split-K partial
    # sums of them, stride_split apart): each program rotates its query head itself, and the one
    # whose piece holds the new token (position ctx - 1) writes its rotated key and its value
    # into the token's cache slot (slot_ptr; -1: a padded row, no write) before reading any
    pdl_start(USE_PDL)
    h = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    kvh = h // num_kv_groups
    ctx = tl.load(context_lens_ptr + b)
    piece = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    lo = split * piece
    hi = tl.minimum(lo + piece, ctx)

    # The scores and the weighted sum are tl.dot over a 16-row query tile whose row 0 is this
    # head's query (rows 1-15 are zeros, never stored): tensor-core tiles, per-row softmax
    # statistics with no cross-warp reduction per tile, and K/V loads that Triton pipelines
    # (NUM_STAGES) because they feed a dot.
    rows = tl.arange(0, QROWS)
    is_q = rows == 0
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    dtype = out_ptr.dtype.element_ty
    if ROPE:
        cos_row = cos_ptr + b * stride_ct
        sin_row = sin_ptr + b * stride_ct
        q = _rotated_rows(q_ptr + b * stride_qt + h * stride_qh, cos_row, sin_row, is_q,
                          head_dim, stride_split, BLOCK_D, SPLITS, dtype)  # fmt: skip
        slot = tl.load(slot_ptr + b).to(tl.int64)
        if (slot >= 0) & (lo <= ctx - 1) & (ctx - 1 < hi):
            row0 = is_q[:, None] & mask_d[None, :]
            dst = ((slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs
                   + kvh * stride_ch + rows[:, None] * 0 + offs_d[None, :])  # fmt: skip
            k_new = _rotated_rows(k_ptr + b * stride_kt + kvh * stride_kh, cos_row, sin_row,
                                  is_q, head_dim, stride_split, BLOCK_D, SPLITS, dtype)  # fmt: skip
            v_src = v_ptr + b * stride_vt + kvh * stride_vh + rows[:, None] * 0 + offs_d[None, :]
            v_new = load_input(v_src, row0, stride_split, SPLITS, dtype)
            tl.store(k_cache_ptr + dst, k_new.to(k_cache_ptr.dtype.element_ty), mask=row0)
            tl.store(v_cache_ptr + dst, v_new.to(v_cache_ptr.dtype.element_ty), mask=row0)
        # the key and value just stored are read back by this program's last tile
        tl.debug_barrier()
    else:
        q_ptrs = q_ptr + b * stride_qt + h * stride_qh + rows[:, None] * 0 + offs_d[None, :]
        q = tl.load(q_ptrs, mask=is_q[:, None] & mask_d[None, :], other=0.0)  # (16, BD)
    m_i = tl.full([QROWS], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([QROWS], dtype=tl.float32)
    acc = tl.zeros([QROWS, BLOCK_D], dtype=tl.float32)
    bt_ptr = block_tables_ptr + b * stride_bt
    head_off = kvh * stride_ch
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        block = tl.load(bt_ptr + offs_n // BLOCK_SIZE, mask=mask_n, other=0)
        row = block.to(tl.int64) * stride_cb + (offs_n % BLOCK_SIZE) * stride_cs  # (BN,)
        kv = row[:, None] + head_off + offs_d[None, :]  # (BN, BD)
        mask_kv = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_cache_ptr + kv, mask=mask_kv, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale_log2  # (16, BN) fp32, log2 units for exp2
        s = tl.where(mask_n[None, :], s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + kv, mask=mask_kv, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    dst_off = b * stride_ot + h * stride_oh
    row0 = is_q[:, None] & mask_d[None, :]  # (16, BD): only the query row is stored
    if DIRECT:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        out_ptrs = out_ptr + dst_off + rows[:, None] * 0 + offs_d[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row0)
    else:
        bh = b * tl.num_programs(0) + h
        part = bh * num_splits + split
        tl.store(part_acc_ptr + part * BLOCK_D + rows[:, None] * 0 + offs_d[None, :], acc,
                 mask=is_q[:, None])  # fmt: skip
        tl.store(part_ml_ptr + part * 2 + rows * 0, m_i, mask=is_q)
        tl.store(part_ml_ptr + part * 2 + 1 + rows * 0, l_i, mask=is_q)
        if FUSED:
            # One thread issues a scalar atomic: the barrier first orders every thread's partial
            # stores before it, so its release covers them; its acquire (the old count is
            # broadcast through shared memory behind a barrier) orders the merge's loads after
            # the other programs' releases.
            tl.debug_barrier()
            arrived = tl.atomic_add(counter_ptr + bh, 1, sem="acq_rel", scope="gpu")
            if arrived == num_splits - 1:
                _merge_splits(part_acc_ptr, part_ml_ptr, out_ptr, bh, dst_off, head_dim,
                              num_splits, BLOCK_S, BLOCK_D)  # fmt: skip
                # every other program of this row is done with the counter: the next launch
                # (or graph replay) starts from 0 again
                tl.store(counter_ptr + bh, 0)


@triton.jit
def _decode_reduce_kernel(
    part_acc_ptr, part_ml_ptr, out_ptr,
    stride_ot, stride_oh, head_dim, num_splits,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_start(USE_PDL)
    h = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    _merge_splits(part_acc_ptr, part_ml_ptr, out_ptr, b * tl.num_programs(0) + h,
                  b * stride_ot + h * stride_oh, head_dim, num_splits, BLOCK_S, BLOCK_D)  # fmt: skip


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    splits: int | None = None,
    fused: bool | None = None,
) -> torch.Tensor:
    # q [B, H, D] (one token per sequence) · caches [NB, BS, Hk, D] · block_tables [B, MB] int32
    # · context_lens [B] int32 (read on the device) -> [B, H, D] (q's dtype).
    # fused: merge the splits in the split kernel (default FUSED_REDUCE) or in a second kernel.
    assert q.stride(-1) == 1, "q: unit last stride"
    return _attend(q, k_cache, v_cache, block_tables, context_lens, scale, splits, fused, None)


def rope_decode_attention(
    q: torch.Tensor | PartialSums,
    k: torch.Tensor | PartialSums,
    v: torch.Tensor | PartialSums,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    splits: int | None = None,
    fused: bool | None = None,
) -> torch.Tensor:
    # q [B, H, D] · k, v [B, Hk, D] (strided views, or one GEMM's split-K partial sums) · cos/sin
    # [B, D/2] fp32 · caches [NB, BS, Hk, D] · slot_mapping [B] (-1: no write) · block_tables,
    # context_lens as decode_attention -> [B, H, D]. What rotary_store_kv then decode_attention
    # compute, in one launch: the rotation and the new token's cache write happen in the
    # attention programs (bench/results/decode-rope-attention-h100.log).
    if len({(isinstance(x, PartialSums), input_args(x)[1:]) for x in (q, k, v)}) > 1:
        q, k, v = (total(x) for x in (q, k, v))
    check_rotary(q, k, cos, sin)
    bsz, h, d = q.shape
    assert v.shape == k.shape == (bsz, k_cache.shape[2], d) and v.stride(-1) == 1, (
        f"k, v: expected [{bsz}, {k_cache.shape[2]}, {d}] with a unit last stride, got "
        f"{tuple(k.shape)}, {tuple(v.shape)}"
    )
    assert slot_mapping.shape == (bsz,), (
        f"slot_mapping: expected ({bsz},), got {tuple(slot_mapping.shape)}"
    )
    rope = (k, v, cos, sin, slot_mapping)
    return _attend(q, k_cache, v_cache, block_tables, context_lens, scale, splits, fused, rope)


def _attend(q, k_cache, v_cache, block_tables, context_lens, scale, splits, fused, rope):
    bsz, h, d = q.shape
    nb, block_size, hk, dk = k_cache.shape
    check_paged_cache(h, d, bsz, k_cache, v_cache, block_tables)
    assert context_lens.shape == (bsz,), (
        f"context_lens: expected ({bsz},), got {tuple(context_lens.shape)}"
    )
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if bsz == 0:
        return out
    if splits is None:
        splits = num_splits(bsz, h, block_tables.shape[1] * block_size, q.device)
    fused = FUSED_REDUCE if fused is None else fused
    block_d = triton.next_power_of_2(d)
    block_s = triton.next_power_of_2(splits)
    scale_log2 = scale * 1.4426950408889634  # log2(e)
    direct = splits == 1
    if direct:
        part_acc = part_ml = counters = out  # unused
    else:
        part_acc = torch.empty((bsz, h, splits, block_d), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((bsz, h, splits, 2), dtype=torch.float32, device=q.device)
        counters = _counters(q.device, bsz * h) if fused else out  # [>= B * H] int32
    q_src, num_parts, split_stride = input_args(q)
    if rope is None:  # unused pointers (ROPE is a constexpr: that branch is not compiled)
        k = v = cos = sin = slots = out
    else:
        k, v, cos, sin, slots = rope
    _decode_split_kernel[(h, bsz, splits)](
        q_src, k_cache, v_cache, block_tables, context_lens,
        out, part_acc, part_ml, counters,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        *k_cache.stride()[:3], scale_log2, h // hk, d, splits,
        input_args(k)[0], input_args(v)[0], cos, sin, slots,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0), split_stride,
        BLOCK_SIZE=block_size, BLOCK_N=SPLIT_BLOCK_N if splits > 1 else BLOCK_N, BLOCK_D=block_d,
        BLOCK_S=block_s if fused else 1, DIRECT=direct, FUSED=fused and not direct,
        **pdl_launch(out), num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        ROPE=rope is not None, SPLITS=num_parts,
    )  # fmt: skip
    if not direct and not fused:
        _decode_reduce_kernel[(h, bsz)](
            part_acc, part_ml, out,
            out.stride(0), out.stride(1), d, splits,
            BLOCK_S=block_s, BLOCK_D=block_d, **pdl_launch(out), num_warps=4,
        )  # fmt: skip
    return out
