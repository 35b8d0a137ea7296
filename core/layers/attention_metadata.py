"""What attention needs to know about one step's batch: where each token's KV goes and lives."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Flattened (varlen) batch of B sequences and T new tokens.

    Every new token's K/V is first written to the paged cache (``slot_mapping``), then attention
    reads each sequence's whole context through its block table: prefill, chunked prefill,
    prefix-cached prefill and decode are all the same computation.
    """

    slot_mapping: torch.Tensor  # [T] int64: cache slot (block * block_size + offset); -1 = skip
    query_start_loc: torch.Tensor  # [B+1] int32: cumulative new-token counts
    context_lens: torch.Tensor  # [B] int32: tokens in the cache after this step
    block_tables: torch.Tensor  # [B, max_blocks] int32: -1 past the end
    token_context_lens: (
        torch.Tensor
    )  # [T] int32: context_lens of each token's sequence (dynamic NTK)
    max_query_len: int
    max_context_len: int
    is_decode: bool  # every sequence has exactly one new token

    @property
    def num_seqs(self) -> int:
        return self.context_lens.shape[0]
