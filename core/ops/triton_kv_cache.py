"""Triton KV-cache write: each new token's K/V into its paged-cache slot (graph-safe)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.ops.paged_cache_shapes import check_cache_strides
from core.ops.pdl import pdl_launch
from core.ops.triton_pdl import pdl_start


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_cb, stride_cs, stride_ch,
    num_kv_heads, head_dim, BLOCK_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_start(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:  # -1: padded row of a CUDA-graph batch, nothing to write
        heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]  # (BH, 1)
        offs = tl.arange(0, BLOCK_D)[None, :]  # (1, BD)
        mask = (heads < num_kv_heads) & (offs < head_dim)
        # slot = block * BS + i: token i of cache block ``block``
        blk = slot // BLOCK_SIZE
        dst = blk * stride_cb + (slot % BLOCK_SIZE) * stride_cs + heads * stride_ch + offs
        k = tl.load(k_ptr + t * stride_kt + heads * stride_kh + offs, mask=mask)
        v = tl.load(v_ptr + t * stride_vt + heads * stride_vh + offs, mask=mask)
        tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    # k, v [T, Hk, D] (strided views ok) · caches [NB, BS, Hk, D] (any block/token/head strides)
    # · slot_mapping [T] int (-1 = skip)
    t, hk, d = k.shape
    assert v.shape == k.shape, f"v: expected {tuple(k.shape)}, got {tuple(v.shape)}"
    assert k_cache.dim() == 4 and k_cache.shape[2:] == (hk, d), (
        f"k_cache: expected [NB, BS, {hk}, {d}], got {tuple(k_cache.shape)}"
    )
    check_cache_strides(k_cache, v_cache)
    assert slot_mapping.shape == (t,), (
        f"slot_mapping: expected ({t},), got {tuple(slot_mapping.shape)}"
    )
    assert k.stride(-1) == 1 and v.stride(-1) == 1, "k/v: unit last stride"
    if t == 0:
        return
    block_d = triton.next_power_of_2(d)
    block_h = min(triton.next_power_of_2(hk), max(1, 4096 // block_d))
    _store_kv_kernel[(t, triton.cdiv(hk, block_h))](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), *k_cache.stride()[:3],
        hk, d, BLOCK_SIZE=k_cache.shape[1],
        BLOCK_H=block_h, BLOCK_D=block_d, **pdl_launch(k), num_warps=4,
    )  # fmt: skip
