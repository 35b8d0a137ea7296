"""The public Python API on the tiny model, as a user calls it."""

from __future__ import annotations

import pytest

from core.llm import LLM
from core.sampling_params import SamplingParams
from tests.conftest import tiny_config, tiny_model_config


@pytest.fixture(scope="module")
def llm():
    return LLM(overrides=["engine.device=cpu", "engine.num_kv_blocks=512"])


def test_generate_keeps_prompt_order_and_reports_usage(llm):
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    outs = llm.generate(["Hello", "The capital of France is", "1 2 3"], params, use_tqdm=False)
    assert [o.prompt for o in outs] == ["Hello", "The capital of France is", "1 2 3"]
    for o in outs:
        assert o.finished and len(o.outputs[0].token_ids) == 5
        assert o.usage.prompt_tokens == len(llm.tokenizer.encode(o.prompt))
    again = llm.generate(["1 2 3"], params, use_tqdm=False)[0]
    assert again.outputs[0].token_ids == outs[2].outputs[0].token_ids


def test_chat_applies_the_template(llm):
    messages = [{"role": "user", "content": "hi"}]
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    out = llm.chat(messages, params)
    assert out.prompt == llm.template.render(messages)
    assert out.prompt_token_ids[0] == 1  # BOS once, at the start
    streamed = "".join(o.outputs[0].delta_text for o in llm.chat(messages, params, stream=True))
    assert streamed == out.text


def test_closing_a_stream_early_aborts_it(llm):
    free = llm.engine.block_manager.num_free_blocks
    stream = llm.stream("abc", SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    next(stream)
    stream.close()
    assert not llm.engine.has_unfinished()
    assert llm.engine.block_manager.num_free_blocks == free


def test_chat_turns_of_a_session_reuse_the_prefix_cache(llm):
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    first = list(llm.chat_turn("s1", "hello", params))[-1]
    before = llm.engine.stats.num_prefill_tokens
    second = list(llm.chat_turn("s1", "more", params))[-1]
    new = len(llm.tokenizer.encode(llm.template.render_next_turn("more")))
    assert second.prompt_token_ids[: len(first.prompt_token_ids)] == first.prompt_token_ids
    assert llm.engine.stats.num_prefill_tokens - before <= new + llm.cfg.engine.block_size
    assert llm.end_session("s1")


def test_streaming_chinese_and_emoji_gives_whole_characters(tokenizer_path):
    """With the real tokenizer, a random model emits byte-fallback pieces: deltas must still be
    whole UTF-8 characters, and add up to the decoded text."""
    mc = tiny_model_config(
        vocab_size=103168,
        tokenizer=str(tokenizer_path),
        session_len=512,
        max_position_embeddings=512,
    )
    llm = LLM(tiny_config(mc))
    prompt = "你好，世界 😀👍🏽 " * 3
    params = SamplingParams(temperature=1.0, max_tokens=60, seed=3, ignore_eos=True)
    deltas = [o.outputs[0].delta_text for o in llm.stream(prompt, params)]
    final = llm.generate([prompt], params, use_tqdm=False)[0]
    ids = final.outputs[0].token_ids
    assert "".join(deltas) == final.text == llm.tokenizer.decode(ids)
    for d in deltas:
        assert "\ufffd" not in d or "\ufffd" in llm.tokenizer.decode(ids)
    # the prompt's own characters round-trip through the tokenizer
    assert llm.tokenizer.decode(llm.tokenizer.encode(prompt)) == prompt
