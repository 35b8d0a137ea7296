"""Triton split-KV (flash-decoding) attention for decode steps: one new token per sequence.

A batch of one sequence has only H (40) query rows, far too few programs for 132 SMs if each
walked its whole context. So the context is cut into ``num_splits`` pieces: grid (H, B, S),
each program runs an online softmax over its piece and writes an unnormalised partial
(acc [D], running max m, sum l); a second kernel, grid (H, B), merges the S partials. Heads
are the fastest grid axis, so programs running side by side read neighbouring 256-byte rows of
the same cache tokens ([NB, BS, Hk, D] keeps a token's heads together); against (B, H, S) order
this measured the same on an H100 (bench/results/ops-H100-80GB-HBM3.md).

CUDA-graph safety: the grid depends only on B, H and ``block_tables.shape[1]`` (static in graph
mode); each program reads its sequence's live length from ``context_lens`` on the device and
sizes its piece from it (``cdiv(ctx, S)`` rounded up to BLOCK_N), so every live context is spread
over all S splits whatever its length, and splits past the end write an empty partial.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from core.ops.paged_cache_shapes import check_paged_cache

# Context tokens per inner step of a split program, and the programs per SM that the split
# count aims for at small batch: bench/ops.py --sweep on an H100 (bench/results/ops-*.md);
# BLOCK_N 64 wins at batch >= 16 (0.65-0.72 of copy bandwidth vs 0.54-0.66 for 32), the split
# target is a compromise (8 is faster at batch 1 with 1024 context, slower at batch 16).
BLOCK_N = 64
PROGRAMS_PER_SM = 4
MAX_SPLITS = 64
NUM_WARPS = 4


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter: behave as on an H100
    return torch.cuda.get_device_properties(device).multi_processor_count


def num_splits(batch: int, num_heads: int, max_context_len: int, device: torch.device) -> int:
    """Splits per (sequence, head), from static sizes only (never the live context)."""
    want = triton.cdiv(PROGRAMS_PER_SM * _num_sms(device), batch * num_heads)
    return max(1, min(want, triton.cdiv(max_context_len, BLOCK_N), MAX_SPLITS))


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr,
    out_ptr, part_acc_ptr, part_ml_ptr,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_bt,
    scale_log2, num_kv_groups, num_kv_heads, head_dim, num_splits,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DIRECT: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    kvh = h // num_kv_groups
    ctx = tl.load(context_lens_ptr + b)
    piece = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    lo = split * piece
    hi = tl.minimum(lo + piece, ctx)

    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    q = tl.load(q_ptr + b * stride_qt + h * stride_qh + offs_d, mask=mask_d, other=0.0)
    q = q.to(tl.float32) * scale_log2  # (BD,): scores come out in log2 units for exp2
    m_i = -float("inf")
    l_i = 0.0
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    row_stride = num_kv_heads * head_dim
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        block = tl.load(
            block_tables_ptr + b * stride_bt + offs_n // BLOCK_SIZE, mask=mask_n, other=0
        )
        slot = block.to(tl.int64) * BLOCK_SIZE + offs_n % BLOCK_SIZE  # (BN,)
        kv = slot[:, None] * row_stride + kvh * head_dim + offs_d[None, :]  # (BN, BD)
        mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_cache_ptr + kv, mask=mask, other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], axis=1)  # (BN,)
        s = tl.where(mask_n, s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new)
        v = tl.load(v_cache_ptr + kv, mask=mask, other=0.0).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m_i = m_new

    if DIRECT:
        out = acc / tl.where(l_i > 0, l_i, 1.0)
        dst = out_ptr + b * stride_ot + h * stride_oh + offs_d
        tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=mask_d)
    else:
        part = (b * tl.num_programs(0) + h) * num_splits + split
        tl.store(part_acc_ptr + part * BLOCK_D + offs_d, acc)
        tl.store(part_ml_ptr + part * 2, m_i)
        tl.store(part_ml_ptr + part * 2 + 1, l_i)


@triton.jit
def _decode_reduce_kernel(
    part_acc_ptr, part_ml_ptr, out_ptr,
    stride_ot, stride_oh, head_dim, num_splits,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < num_splits
    offs_d = tl.arange(0, BLOCK_D)
    part = (b * tl.num_programs(0) + h) * num_splits + offs_s  # (BS,)
    m = tl.load(part_ml_ptr + part * 2, mask=mask_s, other=-float("inf"))
    l_sum = tl.load(part_ml_ptr + part * 2 + 1, mask=mask_s, other=0.0)
    # empty splits carry m = -inf; a floor keeps exp2 finite when every split is empty
    m_max = tl.maximum(tl.max(m, axis=0), -1e30)
    w = tl.exp2(m - m_max)  # (BS,)
    den = tl.sum(w * l_sum, axis=0)
    acc = tl.load(
        part_acc_ptr + part[:, None] * BLOCK_D + offs_d[None, :], mask=mask_s[:, None], other=0.0
    )
    num = tl.sum(w[:, None] * acc, axis=0)  # (BD,)
    out = num / tl.where(den > 0, den, 1.0)
    dst = out_ptr + b * stride_ot + h * stride_oh + offs_d
    tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=offs_d < head_dim)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    splits: int | None = None,
) -> torch.Tensor:
    # q [B, H, D] (one token per sequence) · caches [NB, BS, Hk, D] · block_tables [B, MB] int32
    # · context_lens [B] int32 (read on the device) -> [B, H, D] (q's dtype)
    bsz, h, d = q.shape
    nb, block_size, hk, dk = k_cache.shape
    check_paged_cache(h, d, bsz, k_cache, v_cache, block_tables)
    assert context_lens.shape == (bsz,), (
        f"context_lens: expected ({bsz},), got {tuple(context_lens.shape)}"
    )
    assert q.stride(-1) == 1, "q: unit last stride"
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if bsz == 0:
        return out
    if splits is None:
        splits = num_splits(bsz, h, block_tables.shape[1] * block_size, q.device)
    block_d = triton.next_power_of_2(d)
    scale_log2 = scale * 1.4426950408889634  # log2(e)
    direct = splits == 1
    if direct:
        part_acc = part_ml = out  # unused
    else:
        part_acc = torch.empty((bsz, h, splits, block_d), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((bsz, h, splits, 2), dtype=torch.float32, device=q.device)
    _decode_split_kernel[(h, bsz, splits)](
        q, k_cache, v_cache, block_tables, context_lens,
        out, part_acc, part_ml,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        scale_log2, h // hk, hk, d, splits,
        BLOCK_SIZE=block_size, BLOCK_N=BLOCK_N, BLOCK_D=block_d, DIRECT=direct, num_warps=NUM_WARPS,
    )  # fmt: skip
    if not direct:
        _decode_reduce_kernel[(h, bsz)](
            part_acc, part_ml, out,
            out.stride(0), out.stride(1), d, splits,
            BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
    return out
