"""The asyncio engine: concurrent requests stream independently; leaving early aborts."""

from __future__ import annotations

import asyncio

from core.async_engine import AsyncEngine
from tests.engine_fixtures import greedy, make_engine, run_all


def test_concurrent_streams_match_offline_generation_and_early_exit_aborts():
    engine = make_engine()
    prompts = [[5 + i, 6, 7, 8 + i] for i in range(6)]
    for i, p in enumerate(prompts):
        engine.add_request(p, greedy(10), f"off{i}")
    offline = {k: v.outputs[0].token_ids for k, v in run_all(engine).items()}
    total = engine.block_manager.num_free_blocks
    aengine = AsyncEngine(engine)

    async def consume(i, stop_after=None):
        tokens, n = [], 0
        async for out in aengine.generate(prompts[i], greedy(10), f"on{i}"):
            tokens += out.outputs[0].delta_token_ids
            n += 1
            if stop_after is not None and n >= stop_after:
                break
        return tokens

    async def main():
        results = await asyncio.gather(*(consume(i) for i in range(5)), consume(5, stop_after=2))
        await asyncio.sleep(0.05)
        return results

    results = asyncio.run(main())
    for i in range(5):
        assert results[i] == offline[f"off{i}"]
    assert results[5] == offline["off5"][:2]
    assert not engine.has_unfinished()
    assert engine.block_manager.num_free_blocks == total
