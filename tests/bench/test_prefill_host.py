"""bench/prefill_host.py times a forward over a fresh request each time and gives its blocks
back (a leak would shrink the cache run by run and change what is timed)."""

from __future__ import annotations

import numpy as np

from bench.prefill_host import forward_times
from tests.engine_fixtures import make_engine


def test_each_timed_forward_starts_and_ends_with_an_empty_cache():
    engine = make_engine()
    total = engine.block_manager.num_free_blocks
    rng = np.random.default_rng(0)
    for i, prompt in enumerate((5, 40, 40)):
        host, gpu, wall = forward_times(engine, prompt, rng, f"p{i}")
        assert 0 < host <= wall and gpu > 0
        assert engine.block_manager.num_free_blocks == total and not engine.has_unfinished()
    engine.block_manager.check_invariants()
