"""plugins/models/internlm/chat_template.py and core/chat_template.py: the exact prompt strings
and ids of InternLM's chat format, and the session/prefix-cache property."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.chat_template import ChatTemplate
from core.tokenizer import ByteTokenizer, SentencePieceTokenizer
from plugins.models.internlm.chat_template import INTERNLM_CHAT
from tests.conftest import TOKENIZER_PATH as TOKENIZER_MODEL

# Written out by hand from shared/data/internlm/README.md (not taken from the code under test).
META = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI "
    "Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the "
    "user such as English and 中文.\n"
)
BOS, EOA, EOS = 1, 103028, 2

TWO_TURNS = [
    {"role": "user", "content": "Hi, who are you?"},
    {"role": "assistant", "content": "I am InternLM."},
    {"role": "user", "content": "你好，世界"},
]
TWO_TURNS_TEXT = (
    "<s><|System|>:" + META + "\n"
    "<|User|>:Hi, who are you?\n<|Bot|>:I am InternLM.<eoa>\n"
    "<|User|>:你好，世界\n<|Bot|>:"
)


@pytest.fixture(scope="module")
def sp():
    if not TOKENIZER_MODEL.is_file():
        pytest.skip(
            f"InternLM tokenizer.model not found at {TOKENIZER_MODEL} (NYBBLE_INTERNLM_DATA)"
        )
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(TOKENIZER_MODEL))


@pytest.fixture(scope="module")
def tok(sp) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(TOKENIZER_MODEL)


def test_meta_instruction_is_the_published_one():
    assert INTERNLM_CHAT.meta_instruction == META
    assert INTERNLM_CHAT.name == "internlm-chat"


def test_first_turn():
    assert INTERNLM_CHAT.render([{"role": "user", "content": "hi"}]) == (
        f"<s><|System|>:{META}\n<|User|>:hi\n<|Bot|>:"
    )


def test_two_turn_conversation_text():
    assert INTERNLM_CHAT.render(TWO_TURNS) == TWO_TURNS_TEXT


def test_two_turn_conversation_ids(tok, sp):
    expected = (
        [BOS]
        + sp.encode("<|System|>:" + META + "\n<|User|>:Hi, who are you?\n<|Bot|>:I am InternLM.")
        + [EOA]
        + sp.encode("\n<|User|>:你好，世界\n<|Bot|>:")
    )
    assert tok.encode(INTERNLM_CHAT.render(TWO_TURNS)) == expected
    assert expected[-5:] == [333, 352, 23845, 352, 27232]  # README: encode("<|Bot|>:")


def test_session_turns_give_the_same_ids(tok):
    """A session (first turn, answer ids, <eoa>, next turn) tokenizes like the re-rendered
    conversation, so either way the cached KV of the first turn is reused."""
    first = tok.encode(INTERNLM_CHAT.render(TWO_TURNS[:1]))
    answer = tok.encode("I am InternLM.")
    session = first + answer + [EOA] + tok.encode(INTERNLM_CHAT.render_next_turn("你好，世界"))
    assert session == tok.encode(INTERNLM_CHAT.render(TWO_TURNS))


def test_system_message_replaces_meta_instruction():
    text = INTERNLM_CHAT.render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    )
    assert text == "<s><|System|>:Be brief.\n<|User|>:hi\n<|Bot|>:"


def test_without_generation_prompt():
    text = INTERNLM_CHAT.render(TWO_TURNS[:2], add_generation_prompt=False)
    assert text == f"<s><|System|>:{META}\n<|User|>:Hi, who are you?\n<|Bot|>:I am InternLM.<eoa>\n"


def test_render_next_turn():
    assert INTERNLM_CHAT.render_next_turn("again") == "\n<|User|>:again\n<|Bot|>:"


def test_content_parts():
    parts = [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]
    assert INTERNLM_CHAT.render([{"role": "user", "content": parts}]) == INTERNLM_CHAT.render(
        [{"role": "user", "content": "hello"}]
    )


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "empty"),
        ([{"role": "tool", "content": "x"}], "'tool'"),
        ([{"role": "user", "content": "a"}, {"role": "function", "content": "b"}], "'function'"),
        ([{"content": "no role"}], "None"),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
            "only allowed first",
        ),
        ([{"role": "user", "content": None}], "content"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "content"),
        (["just a string"], "expected a dict"),
    ],
)
def test_bad_messages_raise(messages, match):
    with pytest.raises(ValueError, match=match):
        INTERNLM_CHAT.render(messages)


def test_stop_ids():
    assert INTERNLM_CHAT.stop_words == ("<eoa>",)
    assert set(INTERNLM_CHAT.stop_token_ids) == {EOA, EOS}
    assert INTERNLM_CHAT.resolve_stop_token_ids(ByteTokenizer()) == (EOA, EOS)


def test_stop_ids_resolve_special_stop_words():
    t = ChatTemplate("t", "", "", "U:", "\n", "A:", "<eoh>", "\n", "", stop_words=("<eoh>", "x"))
    assert t.resolve_stop_token_ids(ByteTokenizer()) == (103027,)


def test_registered_by_the_plugin():
    from plugins.models.internlm import plugin

    registered = {}
    plugin.register_chat_templates(register=lambda name, t: registered.setdefault(name, t))
    assert registered == {"internlm-chat": INTERNLM_CHAT}


_text = st.text(max_size=12)
_turns = st.lists(st.tuples(_text, _text), min_size=0, max_size=4)


@settings(max_examples=200, deadline=None)
@given(system=st.one_of(st.none(), _text), turns=_turns, last_user=_text, answer=_text, nxt=_text)
def test_next_turn_extends_previous_rendering(system, turns, last_user, answer, nxt):
    """Turn N+1's rendering = turn N's rendering + answer + <eoa> + render_next_turn(next)."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    for u, a in turns:
        messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": last_user})
    now = INTERNLM_CHAT.render(messages)
    later = INTERNLM_CHAT.render(
        messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": nxt}]
    )
    assert later == now + answer + "<eoa>" + INTERNLM_CHAT.render_next_turn(nxt)
    assert now.startswith("<s>") and now.count("<s>") == 1 + sum(
        m["content"].count("<s>") for m in messages
    )
