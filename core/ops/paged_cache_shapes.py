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
    assert v_cache.shape == k_cache.shape and k_cache.is_contiguous() and v_cache.is_contiguous(), (
        "caches: same shape, contiguous"
    )
    assert (
        block_tables.dim() == 2
        and block_tables.shape[0] == num_seqs
        and block_tables.stride(1) == 1
    ), f"block_tables: expected [{num_seqs}, max_blocks], got {tuple(block_tables.shape)}"
