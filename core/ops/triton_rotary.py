"""Triton rotate-half RoPE (core/ops/reference.py is the oracle).

cos/sin come from the layer (fp32, one row per token, dynamic NTK already applied), so the kernel
is a pure gather-rotate-store. Grid (T, 2): program (t, 0) rotates token t's query heads, (t, 1)
its key heads (given a GEMM's split-K partial sums, blocks of PARTIAL_SUM_HEADS heads per
program: grid (T, query blocks + key blocks)). q/k may be strided views of the fused qkv output;
the results are new contiguous tensors, as the reference returns. ``rotary_store_kv`` is the same launch with
program (t, 1) writing the rotated key heads and the value heads straight into the token's
paged-cache slot (what rotary followed by store_kv does in two launches).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.ops.paged_cache_shapes import check_cache_strides
from core.ops.pdl import pdl_launch
from core.ops.triton_partial_sums import input_args, load_input
from core.ops.triton_pdl import pdl_start
from core.partial_sums import PartialSums, total

# heads per program where q, k, v are split-K partial sums (internlm-chat-20b: 5 query and 5
# key / value programs per token instead of 1 and 1); a power of two
PARTIAL_SUM_HEADS = 8


@triton.jit
def _rotate_heads(x_ptr, dst, c, s, t, stride_xt, stride_xh, dst_stride_h, num_heads, half,
                  stride_split, h0, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
                  SPLITS: tl.constexpr, DTYPE: tl.constexpr):  # fmt: skip
    # token t's heads h0 .. h0 + BLOCK_H - 1 of x (or SPLITS partial sums of them), rotated, to
    # dst + head * dst_stride_h
    heads = h0 + tl.arange(0, BLOCK_H)[:, None]  # (BH, 1)
    offs = tl.arange(0, BLOCK_HALF)[None, :]  # (1, BD/2)
    mask = (heads < num_heads) & (offs < half)
    src = x_ptr + t * stride_xt + heads * stride_xh + offs
    x1 = load_input(src, mask, stride_split, SPLITS, DTYPE)
    x2 = load_input(src + half, mask, stride_split, SPLITS, DTYPE)
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    out = dst + heads * dst_stride_h + offs
    tl.store(out, (x1f * c - x2f * s).to(dst.dtype.element_ty), mask=mask)
    tl.store(out + half, (x2f * c + x1f * s).to(dst.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr,
    k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ct,
    stride_cb, stride_cs, stride_ch, stride_split,
    num_heads, num_kv_heads, half,
    BLOCK_H: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, STORE: tl.constexpr, USE_PDL: tl.constexpr,
    SPLITS: tl.constexpr = 0,
):  # fmt: skip
    # q, k, v: tensors, or (SPLITS > 0) a GEMM's split-K partial sums of them, stride_split apart.
    # Program (t, j): token t's query heads block j (BLOCK_H heads) for j < the number of such
    # blocks, else key / value heads block j - that (BLOCK_HK heads).
    pdl_start(USE_PDL)
    dtype = q_out_ptr.dtype.element_ty
    t = tl.program_id(0).to(tl.int64)
    q_blocks = tl.cdiv(num_heads, BLOCK_H)
    j = tl.program_id(1)
    offs = tl.arange(0, BLOCK_HALF)
    c = tl.load(cos_ptr + t * stride_ct + offs, mask=offs < half, other=0.0)[None, :]
    s = tl.load(sin_ptr + t * stride_ct + offs, mask=offs < half, other=0.0)[None, :]
    if j < q_blocks:
        _rotate_heads(q_ptr, q_out_ptr + t * num_heads * 2 * half, c, s, t, stride_qt, stride_qh,
                      2 * half, num_heads, half, stride_split, j * BLOCK_H, BLOCK_H, BLOCK_HALF,
                      SPLITS, dtype)  # fmt: skip
    elif not STORE:
        _rotate_heads(k_ptr, k_out_ptr + t * num_kv_heads * 2 * half, c, s, t, stride_kt,
                      stride_kh, 2 * half, num_kv_heads, half, stride_split,
                      (j - q_blocks) * BLOCK_HK, BLOCK_HK, BLOCK_HALF, SPLITS, dtype)  # fmt: skip
    else:  # rotated K and V straight into token t's cache slot (-1: a padded row, no write)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        if slot >= 0:
            row = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs
            h0 = (j - q_blocks) * BLOCK_HK
            _rotate_heads(k_ptr, k_cache_ptr + row, c, s, t, stride_kt, stride_kh, stride_ch,
                          num_kv_heads, half, stride_split, h0, BLOCK_HK, BLOCK_HALF, SPLITS,
                          dtype)  # fmt: skip
            heads = h0 + tl.arange(0, BLOCK_HK)[:, None]  # (BHk, 1)
            offs_d = tl.arange(0, 2 * BLOCK_HALF)[None, :]  # (1, BD)
            mask = (heads < num_kv_heads) & (offs_d < 2 * half)
            v_src = v_ptr + t * stride_vt + heads * stride_vh + offs_d
            v = load_input(v_src, mask, stride_split, SPLITS, dtype)
            dst = v_cache_ptr + row + heads * stride_ch + offs_d
            tl.store(dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def check_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """The shapes rotary, rotary_store_kv and rope_decode_attention take (q, k may be partial sums)."""
    t, _, d = q.shape
    assert k.dim() == 3 and k.shape[0] == t and k.shape[2] == d, (
        f"k: expected [{t}, Hk, {d}], got {tuple(k.shape)}"
    )
    assert d % 2 == 0 and q.stride(-1) == 1 and k.stride(-1) == 1, (
        "q/k: even head_dim, unit last stride"
    )
    assert cos.shape == (t, d // 2) and sin.shape == cos.shape, (
        f"cos/sin: expected ({t}, {d // 2}), got {tuple(cos.shape)}"
    )
    assert cos.dtype == torch.float32 and sin.dtype == torch.float32, "cos/sin: expected fp32"
    assert cos.stride() == sin.stride() and cos.stride(-1) == 1, (
        "cos/sin: same strides, unit last stride"
    )


def _launch(q, k, v, cos, sin, q_out, k_out, k_cache, v_cache, slots) -> None:
    t, h, d = q.shape
    hk = k.shape[1]
    store = k_cache is not None
    cache_strides = k_cache.stride()[:3] if store else (0, 0, 0)
    if not store:  # unused pointers (STORE is a constexpr: that branch is not compiled)
        k_cache = v_cache = slots = q_out
    (qp, splits, split_stride), kp, vp = (input_args(x) for x in (q, k, v))
    assert kp[1:] == vp[1:] == (splits, split_stride), "q, k, v: partial sums of one GEMM"
    # one program for all query heads and one for all key / value heads of a token; partial
    # sums are splits times the bytes, so their reads spread over blocks of heads
    most = PARTIAL_SUM_HEADS if splits else max(h, hk)
    block_h = min(triton.next_power_of_2(h), triton.next_power_of_2(most))
    block_hk = min(triton.next_power_of_2(hk), triton.next_power_of_2(most))
    grid = (t, triton.cdiv(h, block_h) + triton.cdiv(hk, block_hk))
    _rotary_kernel[grid](
        qp, kp[0], vp[0], cos, sin, q_out, k_out, k_cache, v_cache, slots,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos.stride(0), *cache_strides, split_stride,
        h, hk, d // 2,
        BLOCK_H=block_h, BLOCK_HK=block_hk,
        BLOCK_HALF=triton.next_power_of_2(d // 2), BLOCK_SIZE=k_cache.shape[1] if store else 1,
        STORE=store, **pdl_launch(q_out), num_warps=4, SPLITS=splits,
    )  # fmt: skip


def rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # q [T, H, D] · k [T, Hk, D] (strided views ok) · cos/sin [T, D/2] fp32 -> q [T, H, D], k [T, Hk, D]
    check_rotary(q, k, cos, sin)
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if q.shape[0]:
        _launch(q, k, k, cos, sin, q_out, k_out, None, None, None)
    return q_out, k_out


def rotary_store_kv(
    q: torch.Tensor | PartialSums,
    k: torch.Tensor | PartialSums,
    v: torch.Tensor | PartialSums,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    # q [T, H, D] · k, v [T, Hk, D] (strided views ok) · cos/sin [T, D/2] fp32 · caches
    # [NB, BS, Hk, D] (any block/token/head strides) · slot_mapping [T] int (-1 = skip)
    # -> rotated q [T, H, D]; rotated k and v written to their cache slots. One launch for what
    # rotary + store_kv do in two (a decode step has one per layer fewer). q, k, v may be the
    # split-K partial sums of one GEMM (core/partial_sums.py), added here as they are read; if
    # only some are, all are summed first.
    if len({(isinstance(x, PartialSums), input_args(x)[1:]) for x in (q, k, v)}) > 1:
        q, k, v = (total(x) for x in (q, k, v))
    check_rotary(q, k, cos, sin)
    assert v.shape == k.shape and v.stride(-1) == 1, (
        f"v: expected {tuple(k.shape)} with a unit last stride, got {tuple(v.shape)}"
    )
    assert k_cache.dim() == 4 and k_cache.shape[2:] == k.shape[1:], (
        f"k_cache: expected [NB, BS, {k.shape[1]}, {k.shape[2]}], got {tuple(k_cache.shape)}"
    )
    check_cache_strides(k_cache, v_cache)
    assert slot_mapping.shape == (q.shape[0],), (
        f"slot_mapping: expected ({q.shape[0]},), got {tuple(slot_mapping.shape)}"
    )
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if q.shape[0]:
        _launch(q, k, v, cos, sin, q_out, q_out, k_cache, v_cache, slot_mapping)
    return q_out
