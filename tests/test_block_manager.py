"""Block-manager invariants under random operation sequences, and prefix-cache behaviour."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from core.block_manager import BlockManager
from core.sampling_params import SamplingParams
from core.sequence import Sequence


def seq_of(tokens: list[int]) -> Sequence:
    return Sequence("r", tokens, SamplingParams())


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "grow", "free", "commit"]),
        st.integers(0, 7),  # which live sequence
        st.lists(st.integers(0, 3), min_size=1, max_size=20),  # tokens (few values: many hits)
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, num_blocks=st.integers(1, 12), block_size=st.sampled_from([1, 2, 4]))
def test_invariants_hold_under_random_operations(ops, num_blocks, block_size):
    bm = BlockManager(num_blocks, block_size)
    live: list[Sequence] = []
    for op, idx, tokens in ops:
        if op == "add":
            s = seq_of(tokens)
            bm.match_prefix(s)
            assert s.num_computed_tokens < len(s)  # at least one token left to compute
            if bm.allocate_slots(s, s.num_uncomputed_tokens):
                live.append(s)
            else:
                bm.free(s)
        elif live:
            s = live[idx % len(live)]
            if op == "grow":
                s.num_computed_tokens = len(s)
                s.token_ids.extend(tokens)
                if not bm.allocate_slots(s, s.num_uncomputed_tokens):
                    assert len(s.block_table) * block_size < len(s)  # nothing half-allocated
                    s.token_ids = s.token_ids[: s.num_computed_tokens]
            elif op == "commit":
                s.num_computed_tokens = len(s)
                bm.commit_full_blocks(s)
            else:
                bm.free(s)
                live.remove(s)
        bm.check_invariants()
        assert bm.num_free_blocks + len({b for s in live for b in s.block_table}) == num_blocks
        for s in live:
            assert len(s.block_table) * block_size >= len(s) or s.num_computed_tokens < len(s)
    for s in live:
        bm.free(s)
    bm.check_invariants()
    assert bm.num_free_blocks == num_blocks


def computed_seq(bm: BlockManager, tokens: list[int]) -> Sequence:
    """A sequence whose tokens are all in the cache, full blocks hashed (as after a step)."""
    s = seq_of(tokens)
    bm.match_prefix(s)
    assert bm.allocate_slots(s, len(tokens))
    s.num_computed_tokens = len(tokens)
    bm.commit_full_blocks(s)
    return s


def test_cached_blocks_are_reused_and_evicted_least_recently_freed_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = computed_seq(bm, [1, 2, 3, 4, 5])
    a_blocks = list(a.block_table)
    bm.free(a)  # blocks [1,2] and [3,4] stay cached
    b = seq_of([1, 2, 3, 4, 9])
    assert bm.match_prefix(b) == 4 and b.block_table == a_blocks[:2]
    bm.free(b)
    # a request with nothing in common takes all four blocks: the cached ones are evicted
    c = seq_of([7] * 8)
    bm.match_prefix(c)
    assert bm.allocate_slots(c, 8)
    bm.free(c)
    d = seq_of([1, 2, 3, 4, 9])
    assert bm.match_prefix(d) == 0  # its prefix was evicted
    bm.check_invariants()


def test_shared_prefix_blocks_are_reference_counted():
    bm = BlockManager(num_blocks=8, block_size=2)
    a = computed_seq(bm, [1, 2, 3, 4, 5])
    b = seq_of([1, 2, 3, 4, 6, 7])
    assert bm.match_prefix(b) == 4
    assert b.block_table[:2] == a.block_table[:2]
    assert [bm.ref_counts[x] for x in a.block_table[:2]] == [2, 2]
    bm.free(a)
    assert [bm.ref_counts[x] for x in b.block_table[:2]] == [1, 1]
    bm.check_invariants()


def test_reset_prefix_cache_frees_cached_blocks_and_forgets_them():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = computed_seq(bm, [1, 2, 3, 4, 5])
    bm.free(a)
    assert len(bm.cached_free) == 2
    assert bm.reset_prefix_cache() == 2
    bm.check_invariants()
    assert bm.num_free_blocks == 4 and bm.match_prefix(seq_of([1, 2, 3, 4, 9])) == 0
