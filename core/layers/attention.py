"""Multi-head attention over the paged KV cache."""

from __future__ import annotations

import torch
from torch import nn

from core.kernels import KernelTable
from core.layers.attention_metadata import AttentionMetadata
from core.partial_sums import PartialSums, for_op, total


class PagedAttention(nn.Module):
    """Writes the new tokens' K/V to this layer's cache blocks, then attends over the context.

    The model runner assigns ``k_cache`` / ``v_cache`` ([num_blocks, block_size, Hk, D]) after
    it has sized the cache.
    """

    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, kernels: KernelTable
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)
        self._store = kernels.get("store_kv")
        self._attend = kernels.get("paged_attention")
        self._rope_attend = kernels.get("rope_paged_attention")

    def forward(
        self,
        q: torch.Tensor | PartialSums,
        k: torch.Tensor | PartialSums,
        v: torch.Tensor | PartialSums,
        meta: AttentionMetadata,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # q [T, H, D], k/v [T, Hk, D] · rope: (cos, sin) [T, D/2] fp32 or None -> [T, H, D]
        # With rope, q and k are rotated here (rope_paged_attention; on the GPU a decode step's
        # rotation and KV write run inside its attention launch).
        # q, k, v may be the qkv GEMM's split-K partial sums (core/partial_sums.py).
        if rope is None:
            q = total(q)
            self._store(total(k), total(v), self.k_cache, self.v_cache, meta.slot_mapping)
            return self._attend(q, self.k_cache, self.v_cache, meta, self.scale)
        op = self._rope_attend
        q, k, v = (for_op(op, x) for x in (q, k, v))
        return op(q, k, v, *rope, self.k_cache, self.v_cache, meta, self.scale)
