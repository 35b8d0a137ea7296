"""Triton ``paged_attention``: split-KV decode kernel for decode steps, the varlen paged
kernel for everything else; ``rope_paged_attention``: the same with RoPE and the KV write first,
inside the decode kernel for decode steps (core/ops/reference.py is the oracle)."""

from __future__ import annotations

import torch

from core.layers.attention_metadata import AttentionMetadata
from core.ops.triton_decode_attention import decode_attention, rope_decode_attention
from core.ops.triton_prefill_attention import prefill_attention
from core.ops.triton_rotary import rotary_store_kv
from core.partial_sums import PartialSums


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    # q [T, H, D] · caches [NB, BS, Hk, D] · meta (block tables, context lengths) -> [T, H, D]
    if meta.is_decode:
        # one token per sequence: T == B; graph-safe (no host reads of the metadata)
        assert q.shape[0] == meta.block_tables.shape[0], (
            f"decode: q has {q.shape[0]} tokens for {meta.block_tables.shape[0]} sequences"
        )
        return decode_attention(q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale)
    return prefill_attention(
        q, k_cache, v_cache, meta.block_tables, meta.context_lens, meta.query_start_loc,
        meta.max_query_len, scale,
    )  # fmt: skip


def rope_paged_attention(
    q: torch.Tensor | PartialSums,
    k: torch.Tensor | PartialSums,
    v: torch.Tensor | PartialSums,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    # q [T, H, D] · k, v [T, Hk, D] (or one GEMM's split-K partial sums) · cos/sin [T, D/2] fp32
    # -> [T, H, D]: a decode step in one launch, anything else rotary_store_kv then attention
    if meta.is_decode:
        return rope_decode_attention(
            q, k, v, cos, sin, k_cache, v_cache, meta.slot_mapping, meta.block_tables,
            meta.context_lens, scale,
        )  # fmt: skip
    q = rotary_store_kv(q, k, v, cos, sin, k_cache, v_cache, meta.slot_mapping)
    return paged_attention(q, k_cache, v_cache, meta, scale)
