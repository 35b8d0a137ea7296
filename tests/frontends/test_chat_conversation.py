"""The terminal chat's conversation: turns as a session on the prefix cache, reset, and the
session_len check before anything is sent; the tiny random model on the CPU."""

from __future__ import annotations

import pytest

from core.compose import compose_config
from core.llm import LLM
from plugins.frontends.chat_conversation import Conversation, TurnTooLong

SESSION_LEN = 480  # the system prompt alone is ~420 tokens: two short turns fit, a long one not
OVERRIDES = [
    "engine=cpu-small",
    "sampling.temperature=0",
    "sampling.max_new_tokens=4",
    f"model.session_len={SESSION_LEN}",
]
LONG_MESSAGE = "please answer at length: " + "tell me more " * 8


@pytest.fixture(scope="module")
def cfg():
    return compose_config(OVERRIDES)


@pytest.fixture(scope="module")
def llm(cfg):
    return LLM(cfg)


def answer(conv: Conversation, text: str) -> str:
    return "".join(out.outputs[0].delta_text for out in conv.send(conv.prepare(text)))


def test_each_turn_extends_the_session_until_reset(llm):
    conv = Conversation(llm, llm.sampling_params())
    first = conv.prepare("hello")
    assert first == llm.tokenizer.encode(
        llm.template.render([{"role": "user", "content": "hello"}])
    )
    answer(conv, "hello")
    after_first = list(conv.history)
    assert after_first[: len(first)] == first and len(after_first) == len(first) + 4

    # the first answer was cut at max_new_tokens, so the next turn closes it with <eoa> first
    second = conv.prepare("how are you")
    eoa = llm.tokenizer.encode(llm.template.eoa)
    assert second == eoa + llm.tokenizer.encode(llm.template.render_next_turn("how are you"))
    answer(conv, "how are you")
    assert conv.history[: len(after_first) + len(second)] == after_first + second

    old = conv.session_id
    conv.reset()
    assert old not in llm.engine.sessions and conv.history == [] and conv.num_tokens == 0
    assert conv.prepare("hello") == first  # a new conversation starts from the system prompt


def test_a_turn_past_session_len_is_refused_before_any_request(llm):
    conv = Conversation(llm, llm.sampling_params())
    answer(conv, "hello")
    held = list(conv.history)
    with pytest.raises(TurnTooLong) as refused:
        conv.prepare(LONG_MESSAGE)
    message = str(refused.value)
    turn = len(llm.tokenizer.encode(llm.template.eoa + llm.template.render_next_turn(LONG_MESSAGE)))
    assert message.startswith(f"message not sent: the conversation holds {len(held)} tokens")
    assert f"this message adds {turn} and the answer may take up to 4" in message
    assert f"{len(held) + turn + 4} > session_len={SESSION_LEN}" in message
    assert "type 'reset' to start a new conversation" in message
    assert conv.history == held and not llm.engine.requests  # nothing reached the engine
    conv.reset()

    # a first message that can never fit does not suggest a reset
    with pytest.raises(TurnTooLong) as refused:
        conv.prepare("x" * SESSION_LEN)
    assert "reset" not in str(refused.value) and "shorten the message" in str(refused.value)
