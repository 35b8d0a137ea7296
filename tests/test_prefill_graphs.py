"""The prefill graphs' staging (host side, no GPU needed): the padded inputs a graph replays
hold exactly what the eager prefill feeds the model for the real tokens, and pad rows that
write no KV."""

from __future__ import annotations

import numpy as np
import pytest

from core.prefill_graphs import stage_prefill
from core.scheduler import ScheduledBatch
from tests.engine_fixtures import greedy, make_engine


@pytest.mark.parametrize("prompt_len, budget", [(5, 64), (37, 64), (130, 64)])
def test_staged_inputs_match_the_eager_prefill(prompt_len, budget):
    engine = make_engine(block_size=4, max_num_batched_tokens=budget)
    engine.add_request([(7 * j) % 250 + 3 for j in range(prompt_len)], greedy(2), "r")
    seq = engine.scheduler.waiting[0]
    batch = engine.scheduler.schedule()
    while batch.seqs[0].num_computed_tokens + batch.num_tokens[0] < len(seq):  # earlier chunks
        seq.num_computed_tokens += batch.num_tokens[0]
        batch = engine.scheduler.schedule()
    n = batch.num_tokens[0]
    t = 1 << max(4, (n - 1).bit_length())  # the next captured size
    ids, positions, meta, rows = engine.runner.prepare(ScheduledBatch([seq], [n]))
    mb = engine.runner.max_blocks_per_seq
    i64 = np.full((3, 2 * t), 77, dtype=np.int64)  # stale values must not leak into [:t]
    i32 = np.full(4 + mb, 77, dtype=np.int32)
    stage_prefill(i64, i32, seq, n, t, engine.runner.block_size)
    assert i64[0, :n].tolist() == ids.tolist() and i64[1, :n].tolist() == positions.tolist()
    assert i64[2, :n].tolist() == meta.slot_mapping.tolist()
    assert (i64[0, n:t] == 0).all() and (i64[2, n:t] == -1).all()  # pads write no KV
    context, q_start, q_end, last = i32[:4].tolist()
    assert [q_start, q_end] == meta.query_start_loc.tolist()
    assert context == meta.context_lens.item() and last == rows[0] == n - 1
    table = i32[4 : 4 + len(seq.block_table)].tolist()
    assert table == meta.block_tables[0, : len(seq.block_table)].tolist()
