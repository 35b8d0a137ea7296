"""The engine's promises: batching, chunking, prefix caching and preemption never change a
request's greedy tokens; aborts free blocks; limits are enforced up front."""

from __future__ import annotations

import pytest

from core.engine import RequestError
from core.sampling_params import SamplingParams
from tests.engine_fixtures import PROMPTS, greedy, make_engine, run_all


def alone(prompt, params=None):
    engine = make_engine()
    engine.add_request(prompt, params or greedy(12), "x")
    return run_all(engine)["x"].outputs[0].token_ids


@pytest.fixture(scope="module")
def reference_tokens():
    return [alone(p) for p in PROMPTS]


def batched(engine, params=None):
    for i, p in enumerate(PROMPTS):
        engine.add_request(p, params or greedy(12), f"r{i}")
    done = run_all(engine)
    return [done[f"r{i}"].outputs[0].token_ids for i in range(len(PROMPTS))]


def test_batch_of_mixed_lengths_gives_each_request_its_own_tokens(reference_tokens):
    assert batched(make_engine()) == reference_tokens


def test_requests_joining_mid_flight_give_the_same_tokens(reference_tokens):
    engine = make_engine()
    done = {}
    for i, p in enumerate(PROMPTS):  # one new request every other step
        engine.add_request(p, greedy(12), f"r{i}")
        for _ in range(2):
            done.update({o.request_id: o for o in engine.step() if o.finished})
    done.update(run_all(engine))
    assert [done[f"r{i}"].outputs[0].token_ids for i in range(len(PROMPTS))] == reference_tokens


def test_chunked_prefill_gives_the_same_tokens(reference_tokens):
    engine = make_engine(max_num_batched_tokens=8)  # the 60-token prompt takes 8 steps
    assert batched(engine) == reference_tokens
    assert engine.stats.num_steps > 12 + 60 // 8


def test_without_prefix_caching_gives_the_same_tokens(reference_tokens):
    assert batched(make_engine(enable_prefix_caching=False)) == reference_tokens


def test_preemption_under_a_tiny_kv_budget_gives_the_same_tokens(reference_tokens):
    engine = make_engine(num_kv_blocks=24, block_size=4)  # 96 tokens for 126 + 72
    assert batched(engine) == reference_tokens
    assert engine.scheduler.num_preemptions > 0
    assert engine.block_manager.num_free_blocks == 24
    engine.block_manager.check_invariants()


def test_prefix_cache_skips_the_shared_prefix_of_a_second_request():
    engine = make_engine(block_size=4)
    prefix = list(range(10, 50))  # 40 tokens = 10 full blocks
    engine.add_request(prefix + [60, 61], greedy(4), "a")
    run_all(engine)
    before = engine.stats.num_prefill_tokens
    engine.add_request(prefix + [70, 71, 72], greedy(4), "b")
    out = run_all(engine)["b"]
    assert engine.stats.num_prefill_tokens - before == 3  # only the new tokens
    assert out.usage.cached_tokens == 40
    assert engine.block_manager.prefix_hit_rate == pytest.approx(40 / (42 + 43))
    # and the cached prefix gives the same tokens as computing it from scratch
    assert out.outputs[0].token_ids == alone(prefix + [70, 71, 72], greedy(4))


def test_abort_frees_every_block_at_any_moment():
    engine = make_engine(max_num_batched_tokens=16)
    total = engine.block_manager.num_free_blocks
    engine.add_request(PROMPTS[4], greedy(50), "long")
    engine.add_request(PROMPTS[1], greedy(50), "other")
    engine.step()  # "long" is mid-prefill
    out = engine.abort("long")
    assert out.finished and out.outputs[0].finish_reason == "abort"
    for _ in range(3):
        engine.step()
    engine.abort("other")
    assert not engine.has_unfinished()
    assert engine.block_manager.num_free_blocks == total
    engine.block_manager.check_invariants()


def test_too_long_requests_are_rejected_up_front_with_the_sizes():
    engine = make_engine()
    with pytest.raises(
        RequestError,
        match=r"prompt \(500 tokens\) \+ max_tokens \(100\) = 600 exceeds session_len=512",
    ):
        engine.add_request([5] * 500, greedy(100))
    with pytest.raises(RequestError, match="more than session_len=512"):
        engine.add_request([5] * 600, greedy(1))
    with pytest.raises(RequestError, match="empty"):
        engine.add_request([], greedy(1))
    small = make_engine(num_kv_blocks=4, block_size=4)
    with pytest.raises(RequestError, match=r"cannot fit in the whole KV cache \(16 tokens\)"):
        small.add_request([5] * 10, greedy(10))
    assert not engine.has_unfinished()


def test_max_tokens_none_runs_to_the_session_limit():
    engine = make_engine()
    engine.add_request(
        [5] * 500, SamplingParams(temperature=0, max_tokens=None, ignore_eos=True), "x"
    )
    out = run_all(engine)["x"]
    assert len(out.outputs[0].token_ids) == 12 and out.outputs[0].finish_reason == "length"


def test_seeded_sampling_is_reproducible_whatever_else_is_in_the_batch():
    params = SamplingParams(temperature=1.0, top_k=50, max_tokens=10, seed=1234, ignore_eos=True)
    want = alone(PROMPTS[2], params)
    engine = make_engine()
    for i, p in enumerate(PROMPTS):
        engine.add_request(
            p, SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True), f"noise{i}"
        )
    engine.add_request(PROMPTS[2], params, "seeded")
    assert run_all(engine)["seeded"].outputs[0].token_ids == want


def test_n_sequences_share_the_prompt_and_differ():
    engine = make_engine()
    engine.add_request(
        PROMPTS[1], SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=7, ignore_eos=True), "x"
    )
    out = run_all(engine)["x"]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    assert out.usage.completion_tokens == 18


def test_stop_strings_spanning_tokens_stop_at_the_right_place():
    engine = make_engine()
    engine.add_request(PROMPTS[0], greedy(30), "free")
    text = run_all(engine)["free"].outputs[0].text
    # three characters = three tokens of the byte/stand-in vocabulary, first seen at i >= 5
    i = next(i for i in range(5, len(text) - 3) if text.find(text[i : i + 3]) == i)
    stop = text[i : i + 3]
    engine.add_request(PROMPTS[0], greedy(30, stop=[stop]), "stopped")
    engine.add_request(PROMPTS[0], greedy(30, stop=[stop], include_stop_str_in_output=True), "kept")
    done = run_all(engine)
    first = text.find(stop)
    assert done["stopped"].outputs[0].text == text[:first]
    assert done["stopped"].outputs[0].finish_reason == "stop"
    assert done["stopped"].outputs[0].stop_reason == stop
    assert done["kept"].outputs[0].text == text[: first + len(stop)]


def test_stop_token_ids_and_eos():
    engine = make_engine()
    engine.add_request(PROMPTS[3], greedy(10), "free")
    tokens = run_all(engine)["free"].outputs[0].token_ids
    engine.add_request(PROMPTS[3], greedy(10, stop_token_ids=[tokens[4]]), "stop")
    out = run_all(engine)["stop"].outputs[0]
    first = tokens.index(tokens[4])
    assert out.token_ids == tokens[: first + 1] and out.finish_reason == "stop"
    assert out.stop_reason == tokens[4]


def test_streamed_deltas_add_up_to_the_text():
    engine = make_engine()
    engine.add_request(PROMPTS[5], greedy(15), "x")
    deltas, final = [], None
    while engine.has_unfinished():
        for out in engine.step():
            deltas.append(out.outputs[0].delta_text)
            final = out
    assert len(deltas) == 15
    assert "".join(deltas) == final.outputs[0].text
    assert final.usage.prompt_tokens == len(PROMPTS[5]) and final.usage.completion_tokens == 15


def test_sessions_send_only_the_new_turn_and_reuse_the_cache():
    engine = make_engine(block_size=4)
    engine.add_request(list(range(10, 30)), greedy(6), "t1", session_id="s")
    first = run_all(engine)["t1"]
    history = list(range(10, 30)) + first.outputs[0].token_ids
    assert engine.sessions["s"] == history
    before = engine.stats.num_prefill_tokens
    engine.add_request([40, 41, 42], greedy(6), "t2", session_id="s")
    second = run_all(engine)["t2"]
    assert second.prompt_token_ids == history + [40, 41, 42]
    # the session's blocks come from the prefix cache: only the unfinished block is recomputed
    assert engine.stats.num_prefill_tokens - before <= 3 + 4
    # the same conversation sent whole, without a session, gives the same answer
    assert second.outputs[0].token_ids == alone(history + [40, 41, 42], greedy(6))
    assert engine.end_session("s") and "s" not in engine.sessions


def test_logprobs_are_returned_for_each_token():
    engine = make_engine()
    engine.add_request(PROMPTS[0], greedy(4, logprobs=3), "x")
    out = run_all(engine)["x"].outputs[0]
    assert len(out.logprobs) == 4
    for tok, lp in zip(out.token_ids, out.logprobs):
        assert lp.token_id == tok and lp.rank == 1 and len(lp.top) == 3
        assert lp.top[0][0] == tok and lp.logprob == pytest.approx(lp.top[0][1])


def test_greedy_decode_matches_a_full_forward_each_step():
    """Decode through the paged cache equals recomputing the whole sequence every step."""
    engine = make_engine()
    engine.add_request(PROMPTS[1], greedy(6), "x")
    tokens = run_all(engine)["x"].outputs[0].token_ids
    seq = list(PROMPTS[1])
    for t in tokens:
        fresh = make_engine(enable_prefix_caching=False)
        fresh.add_request(seq, greedy(1), "y")
        assert run_all(fresh)["y"].outputs[0].token_ids == [t]
        seq.append(t)


def test_warm_up_leaves_no_trace_in_later_requests(reference_tokens):
    """The start-up warm-up (run on GPUs) writes KV into free blocks; requests must not see it."""
    engine = make_engine()
    engine.runner.warm_up()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert batched(engine) == reference_tokens


def test_async_output_launches_the_next_step_before_reporting_this_one():
    engine = make_engine(async_output=True)
    engine.add_request(PROMPTS[0], greedy(2), "ends")
    engine.add_request(PROMPTS[1], greedy(5), "goes-on")
    engine.step()  # prefill of both: the first tokens; the first decode step is launched
    assert engine._launched is not None
    assert {s.request_id for s in engine._launched.batch.seqs} == {"ends", "goes-on"}
    (out,) = [o for o in engine.step() if o.request_id == "ends"]
    assert out.finished and len(out.outputs[0].token_ids) == 2
    # its end was known from the token count: the step launched meanwhile does not carry it
    assert [s.request_id for s in engine._launched.batch.seqs] == ["goes-on"]
    # a step that prefills is not launched ahead (its eager launch would delay this report)
    engine.add_request(PROMPTS[2], greedy(3), "joins")
    engine.step()
    assert engine._launched is None
    engine.step()  # the prefill of "joins" with the decode of "goes-on"; then decodes again
    assert {s.request_id for s in engine._launched.batch.seqs} == {"goes-on", "joins"}
    sync = make_engine(async_output=False, async_scheduling=False)
    sync.add_request(PROMPTS[1], greedy(5), "goes-on")
    sync.step()
    assert sync._launched is None


def test_abort_while_a_step_is_in_flight_drops_its_token():
    engine = make_engine(async_output=True)
    total = engine.block_manager.num_free_blocks
    engine.add_request(PROMPTS[2], greedy(20), "aborted")
    engine.add_request(PROMPTS[5], greedy(6), "other")
    for _ in range(3):
        engine.step()
    assert any(s.request_id == "aborted" for s in engine._launched.batch.seqs)
    final = engine.abort("aborted")
    assert final.finished and final.outputs[0].finish_reason == "abort"
    kept = list(final.outputs[0].token_ids)
    done = run_all(engine)
    assert "aborted" not in done and done["other"].outputs[0].finish_reason == "length"
    assert kept == final.outputs[0].token_ids  # the in-flight token never reached it
    assert engine.block_manager.num_free_blocks == total
    engine.block_manager.check_invariants()
