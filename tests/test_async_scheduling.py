"""engine.async_scheduling: a decode step launched before the previous step's tokens reach the
host (placeholders on the host, the real tokens read on the device) changes nothing a user
sees: the same tokens, texts, ends and logprobs, step for step, and every block comes back."""

from __future__ import annotations

import pytest

from core.config import ConfigError, NybbleConfig, validate
from core.sampling_params import SamplingParams
from core.sequence import PLACEHOLDER
from tests.engine_fixtures import PROMPTS, greedy, make_engine, run_all

MODES = {
    "sync": dict(async_output=False, async_scheduling=False),
    "async_output": dict(async_output=True, async_scheduling=False),
    "async_scheduling": dict(async_output=True, async_scheduling=True),
}


def _stream_all(engine) -> dict:
    """Step to the end; per request: every delta text and the final output."""
    seen: dict = {}
    while engine.has_unfinished():
        for out in engine.step():
            deltas, _ = seen.get(out.request_id, ([], None))
            seen[out.request_id] = (deltas + [out.outputs[0].delta_text], out)
    return seen


def _mixed_workload(engine, stop: str, stop_id: int) -> dict:
    engine.add_request(PROMPTS[0], greedy(30, stop=[stop]), "stop-string")
    engine.add_request(PROMPTS[0], greedy(30, stop=[stop], include_stop_str_in_output=True), "kept")
    engine.add_request(PROMPTS[3], greedy(10, stop_token_ids=[stop_id]), "stop-id")
    engine.add_request(PROMPTS[1], greedy(7, logprobs=2), "logprobs")
    seeded = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=9, n=2, seed=5)
    engine.add_request(PROMPTS[2], seeded, "seeded")
    engine.add_request(PROMPTS[4], greedy(3), "short")
    return _stream_all(engine)


def count_fed_steps(engine) -> dict:
    """Wrap the runner: count steps launched with fed tokens, and check what they saw."""
    counts = {"fed": 0, "host": 0}
    execute = engine.runner.execute

    def spy(batch, fed=None):
        if fed is None:
            counts["host"] += 1
            assert all(PLACEHOLDER not in s.token_ids for s in batch.seqs)
        else:
            counts["fed"] += 1
            # each sequence's input is the token still on the device
            assert all(s.token_ids[-1] == PLACEHOLDER for s in batch.seqs)
            assert len(fed.rows) == len(batch.seqs)
        return execute(batch, fed)

    engine.runner.execute = spy
    return counts


def _free_run_stop_markers():
    sync = make_engine(**MODES["sync"])
    sync.add_request(PROMPTS[0], greedy(30), "free")
    sync.add_request(PROMPTS[3], greedy(10), "free-3")
    free = run_all(sync)
    text = free["free"].outputs[0].text
    i = next(i for i in range(5, len(text) - 3) if text.find(text[i : i + 3]) == i)
    return text[i : i + 3], free["free-3"].outputs[0].token_ids[4]


def test_every_mode_streams_the_same_outputs_step_for_step():
    stop, stop_id = _free_run_stop_markers()
    results, fed = {}, {}
    for mode, flags in MODES.items():
        engine = make_engine(**flags)
        fed[mode] = count_fed_steps(engine)
        results[mode] = _mixed_workload(engine, stop, stop_id)
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks, mode
        engine.block_manager.check_invariants()
    assert fed["sync"]["fed"] == fed["async_output"]["fed"] == 0
    # every step after the one prefill was launched before its input tokens were known
    assert fed["async_scheduling"]["host"] == 1 and fed["async_scheduling"]["fed"] >= 5
    for mode in ("async_output", "async_scheduling"):
        assert results[mode].keys() == results["sync"].keys()
        for rid, (deltas, final) in results["sync"].items():
            got_deltas, got = results[mode][rid]
            assert got_deltas == deltas, (mode, rid)
            for a, b in zip(got.outputs, final.outputs, strict=True):
                assert (a.token_ids, a.text, a.finish_reason, a.stop_reason) == (
                    b.token_ids, b.text, b.finish_reason, b.stop_reason
                ), (mode, rid)  # fmt: skip
                assert PLACEHOLDER not in a.token_ids
                assert [(lp.token_id, lp.rank) for lp in a.logprobs] == [
                    (lp.token_id, lp.rank) for lp in b.logprobs
                ]


def test_a_sequence_ended_by_its_token_computes_one_step_more_and_reports_none_of_it():
    engine = make_engine(**MODES["async_scheduling"])
    counts = count_fed_steps(engine)
    stop, stop_id = _free_run_stop_markers()
    params = SamplingParams(temperature=0.0, max_tokens=10, stop_token_ids=[stop_id])
    engine.add_request(PROMPTS[3], params, "stops")
    engine.add_request(PROMPTS[1], greedy(12), "goes-on")
    done = run_all(engine)
    out = done["stops"].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id
    assert out.token_ids[-1] == stop_id and len(out.token_ids) == 5
    assert len(done["goes-on"].outputs[0].token_ids) == 12
    assert counts["fed"] > 0
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_a_sequence_at_its_length_limit_is_not_launched_again():
    engine = make_engine(**MODES["async_scheduling"])
    engine.add_request(PROMPTS[0], greedy(2), "ends")
    engine.add_request(PROMPTS[1], greedy(5), "goes-on")
    engine.step()  # the prefill; the first decode launched ahead with both
    assert {s.request_id for s in engine._launched.batch.seqs} == {"ends", "goes-on"}
    (out,) = [o for o in engine.step() if o.request_id == "ends"]
    assert out.finished and len(out.outputs[0].token_ids) == 2
    # its second token was still on the device when the next step was launched: its count
    # alone said it was the last, so that step left it out
    assert [s.request_id for s in engine._launched.batch.seqs] == ["goes-on"]


def test_penalties_and_waiting_requests_keep_steps_on_host_tokens():
    engine = make_engine(**MODES["async_scheduling"])
    counts = count_fed_steps(engine)
    engine.add_request(PROMPTS[1], greedy(6, repetition_penalty=1.3), "penalised")
    engine.add_request(PROMPTS[2], greedy(6), "plain")
    run_all(engine)
    assert counts["fed"] == 0  # a penalty reads the tokens so far on the host
    engine = make_engine(max_batch_size=1, **MODES["async_scheduling"])
    counts = count_fed_steps(engine)
    engine.add_request(PROMPTS[1], greedy(6), "first")
    engine.add_request(PROMPTS[2], greedy(6), "queued")  # no free slot: the steps are fed
    done = run_all(engine)
    assert counts["fed"] == 10 and len(done) == 2


def test_preemption_while_steps_are_launched_ahead_gives_the_same_tokens():
    # three prompts (16 blocks) that grow past 20 blocks while decoding, none waiting: the
    # newest is preempted by a step scheduled on placeholders, and comes back later
    ref = make_engine(**MODES["sync"])
    engine = make_engine(num_kv_blocks=20, block_size=4, **MODES["async_scheduling"])
    execute = engine.runner.execute
    preempted_by_fed = []

    def spy(batch, fed=None):
        if fed is not None:
            preempted_by_fed.extend(batch.preempted)
        return execute(batch, fed)

    engine.runner.execute = spy
    for e in (ref, engine):
        for i, p in enumerate(PROMPTS[:3]):
            e.add_request(p, greedy(16), f"r{i}")
    want, got = run_all(ref), run_all(engine)
    assert preempted_by_fed
    for rid, out in want.items():
        assert got[rid].outputs[0].token_ids == out.outputs[0].token_ids, rid
    assert engine.block_manager.num_free_blocks == 20
    engine.block_manager.check_invariants()


def test_blocks_finished_under_a_placeholder_are_hashed_with_the_real_token():
    engine = make_engine(block_size=4, **MODES["async_scheduling"])
    counts = count_fed_steps(engine)
    engine.add_request(list(range(10, 30)), greedy(11), "t1", session_id="s")
    first = run_all(engine)["t1"]
    assert counts["fed"] > 0
    before = engine.stats.num_prefill_tokens
    engine.add_request([40, 41, 42], greedy(3), "t2", session_id="s")
    second = run_all(engine)["t2"]
    # 20 + 11 answer tokens = 7 full blocks + 3; the prefix cache holds all 7 full blocks (the
    # answer's three were completed while their last token was still a placeholder)
    assert second.usage.cached_tokens == 28
    assert engine.stats.num_prefill_tokens - before == 31 + 3 - 28
    assert first.outputs[0].token_ids == second.prompt_token_ids[20:31]


def test_abort_between_steps_leaves_no_placeholder():
    engine = make_engine(**MODES["async_scheduling"])
    engine.add_request(PROMPTS[2], greedy(20), "aborted", session_id="s")
    engine.add_request(PROMPTS[5], greedy(6), "other")
    for _ in range(4):
        engine.step()
    final = engine.abort("aborted")
    assert PLACEHOLDER not in final.outputs[0].token_ids
    assert PLACEHOLDER not in engine.sessions["s"]
    assert run_all(engine)["other"].outputs[0].finish_reason == "length"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_async_scheduling_without_async_output_is_a_config_error():
    cfg = NybbleConfig()
    cfg.engine.async_output = False
    with pytest.raises(ConfigError, match="engine.async_scheduling=True.*async_output=false"):
        validate(cfg)
    cfg.engine.async_scheduling = False
    validate(cfg)
