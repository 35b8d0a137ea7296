"""The shape contract of the paged KV cache, checked by every attention launcher."""

from __future__ import annotations

import torch


def check_paged_cache(
    num_heads: int,
    head_dim: int,
    num_seqs: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
) -> None:
    # caches [NB, BS, Hk, D] with Hk dividing the query heads · block_tables [B, max_blocks] int32
    _, _, hk, dk = k_cache.shape
    assert dk == head_dim and num_heads % hk == 0, (
        f"k_cache: expected [NB, BS, Hk | {num_heads}, {head_dim}], got {tuple(k_cache.shape)}"
    )
    check_cache_strides(k_cache, v_cache)
    assert (
        block_tables.dim() == 2
        and block_tables.shape[0] == num_seqs
        and block_tables.stride(1) == 1
    ), f"block_tables: expected [{num_seqs}, max_blocks], got {tuple(block_tables.shape)}"


def check_cache_strides(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """K and V caches: the same [NB, BS, Hk, D] shape and strides, D contiguous. The kernels take
    the other three strides, so a cache stored head-major within each block ([NB, Hk, BS, D] in
    memory) and viewed as [NB, BS, Hk, D] is as valid as a contiguous one. The engine allocates
    contiguous caches: on an H200 the decode kernel ran at the same speed over both layouts."""
    assert k_cache.dim() == 4 and v_cache.shape == k_cache.shape, (
        f"caches: expected two [NB, BS, Hk, D] tensors, got {tuple(k_cache.shape)} and "
        f"{tuple(v_cache.shape)}"
    )
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1, (
        f"caches: expected equal strides with a unit last one, got {k_cache.stride()} and "
        f"{v_cache.stride()}"
    )
