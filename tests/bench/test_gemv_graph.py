"""bench/gemv_graph.py's candidate lists (the timing itself needs a GPU)."""

from __future__ import annotations

import pytest

from bench.gemv_graph import candidates
from bench.kernels import SHAPES
from plugins.awq.kernels import default_config

# internlm-chat-20b's decode shapes (qkv, o, gate_up, down) as (N, K), as the sweep times them
NK = [(sum(sizes), k) for k, sizes in SHAPES.values()]


@pytest.mark.parametrize("m", [1, 16, 32])
@pytest.mark.parametrize(("n", "k"), NK)
def test_mma_sweep_times_the_default_and_the_path_without_mma(m, n, k):
    cfgs = candidates(m, n, k, "mma")
    assert cfgs[0] == default_config(m, n, k)  # the first row is today's choice
    assert default_config(m, n, k, mma=False) in cfgs  # what decode runs without mma.sync
    assert len(cfgs) == len(set(map(repr, cfgs)))  # nothing timed twice
    assert sum(c.path == "mma" for c in cfgs) > 40  # tiles x splits x loads


def test_mma_sweep_has_no_tensor_core_rows_past_its_batch_limit():
    cfgs = candidates(48, 15360, 5120, "mma")
    assert cfgs == [default_config(48, 15360, 5120)]
