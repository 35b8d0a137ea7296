"""Paged KV cache bookkeeping: fixed-size blocks, reference counts, prefix-cache hashing."""

from __future__ import annotations

from collections import OrderedDict, deque

from core.sequence import Sequence


def block_hash(prev_hash: int | None, token_ids: tuple[int, ...]) -> int:
    """A full block's key: the chain of its own tokens and every token before it."""
    return hash((prev_hash, token_ids))


class BlockManager:
    """Owns the KV cache blocks.

    A block is *free* (no owner, no content worth keeping), *in use* (ref_count > 0), or
    *cached* (ref_count 0 but holds a full, hashed block a later request may reuse). Cached
    blocks are evicted least-recently-freed first when free blocks run out.
    """

    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[int | None] = [None] * num_blocks
        self.free_ids: deque[int] = deque(range(num_blocks))
        self.cached_free: OrderedDict[int, None] = OrderedDict()  # LRU: oldest first
        self.hash_to_block: dict[int, int] = {}
        self.seq_hashes: dict[int, list[int]] = {}  # seq_id -> hashes of its full blocks
        self.num_prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.num_prefix_hits = 0  # of which found

    # ---- queries -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids) + len(self.cached_free)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.num_prefix_hits / self.num_prefix_queries if self.num_prefix_queries else 0.0

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- allocation ----------------------------------------------------------------------
    def _take_free_block(self) -> int:
        if self.free_ids:
            block = self.free_ids.popleft()
        else:
            block, _ = self.cached_free.popitem(last=False)
            old = self.block_hashes[block]
            if old is not None and self.hash_to_block.get(old) == block:
                del self.hash_to_block[old]
            self.block_hashes[block] = None
        self.ref_counts[block] = 1
        return block

    def _ref(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            self.cached_free.pop(block, None)
        self.ref_counts[block] += 1

    def match_prefix(self, seq: Sequence) -> int:
        """Attach cached blocks that hold a prefix of ``seq``; return the tokens they cover.

        At least one token is always left to compute, so the step that follows produces logits.
        """
        assert not seq.block_table and seq.num_computed_tokens == 0
        hashes: list[int] = []
        if self.enable_prefix_caching:
            bs = self.block_size
            prev = None
            for start in range(0, len(seq) - 1 - (len(seq) - 1) % bs, bs):
                h = block_hash(prev, tuple(seq.token_ids[start : start + bs]))
                block = self.hash_to_block.get(h)
                if block is None:
                    break
                self._ref(block)
                seq.block_table.append(block)
                hashes.append(h)
                prev = h
        self.seq_hashes[seq.seq_id] = hashes
        cached = len(hashes) * self.block_size
        seq.num_computed_tokens = cached
        if seq.num_preemptions == 0:
            self.num_prefix_queries += seq.num_prompt_tokens
            self.num_prefix_hits += min(cached, seq.num_prompt_tokens)
            seq.num_cached_prompt_tokens = min(cached, seq.num_prompt_tokens)
        return cached

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Make room for ``num_new_tokens`` more tokens of ``seq``; False (and no change) if
        there are not enough blocks."""
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if needed > self.num_free_blocks:
            return False
        for _ in range(max(needed, 0)):
            seq.block_table.append(self._take_free_block())
        return True

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Hash the blocks that became full in this step so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        hashes = self.seq_hashes.setdefault(seq.seq_id, [])
        bs = self.block_size
        # a block holding a token still being sampled is hashed once the token is known
        num_full = min(seq.num_computed_tokens, seq.num_known_tokens) // bs
        while len(hashes) < num_full:
            i = len(hashes)
            h = block_hash(
                hashes[-1] if hashes else None, tuple(seq.token_ids[i * bs : (i + 1) * bs])
            )
            hashes.append(h)
            block = seq.block_table[i]
            if self.block_hashes[block] is None and h not in self.hash_to_block:
                self.block_hashes[block] = h
                self.hash_to_block[h] = block

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks (last block first, so a prefix outlives its tail in LRU)."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, f"block {block} freed twice"
            if self.ref_counts[block] == 0:
                if self.block_hashes[block] is not None:
                    self.cached_free[block] = None
                else:
                    self.free_ids.append(block)
        seq.block_table = []
        self.seq_hashes.pop(seq.seq_id, None)

    def reset_prefix_cache(self) -> int:
        """Forget every cached block (they become free); returns how many. Blocks in use keep
        their contents but are no longer found by later requests."""
        n = len(self.cached_free)
        self.free_ids.extend(self.cached_free)
        for b in self.cached_free:
            self.block_hashes[b] = None
        self.cached_free.clear()
        for b in range(self.num_blocks):
            self.block_hashes[b] = None
        self.hash_to_block.clear()
        return n

    def check_invariants(self) -> None:
        """Every block is exactly one of free / cached / in use (tests call this)."""
        free, cached = set(self.free_ids), set(self.cached_free)
        assert len(free) == len(self.free_ids) and not free & cached
        for b in range(self.num_blocks):
            in_use = self.ref_counts[b] > 0
            assert in_use + (b in free) + (b in cached) == 1, f"block {b} state is inconsistent"
            if b in cached:
                assert self.block_hashes[b] is not None
        for h, b in self.hash_to_block.items():
            assert self.block_hashes[b] == h
