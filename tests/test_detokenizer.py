"""core/detokenizer.py: streamed deltas add up to tokenizer.decode and never split a character."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.detokenizer import IncrementalDetokenizer
from core.tokenizer import ByteTokenizer, SentencePieceTokenizer, Tokenizer
from tests.conftest import TOKENIZER_PATH as TOKENIZER_MODEL
from tests.conftest import needs_tokenizer

needs_model = needs_tokenizer

BYTE = 3  # id of <0x00> in both InternLM's model and ByteTokenizer
EOA = 103028


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    if not TOKENIZER_MODEL.is_file():
        pytest.skip(f"InternLM tokenizer.model not found at {TOKENIZER_MODEL}")
    return SentencePieceTokenizer(TOKENIZER_MODEL)


def stream(
    tokenizer: Tokenizer,
    ids: list[int],
    chunks: list[int] | None = None,
    skip_special_tokens: bool = True,
    prompt_ids: list[int] | None = None,
) -> list[str]:
    """Feed ``ids`` in chunks of the given sizes (default one at a time); return all deltas."""
    det = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens=skip_special_tokens)
    deltas, pos = [], 0
    for size in chunks or []:
        deltas.append(det.step(ids[pos : pos + size]))
        pos += size
    deltas.extend(det.step([i]) for i in ids[pos:])
    deltas.append(det.flush())
    return deltas


@needs_model
@pytest.mark.parametrize(
    "text", ["你好，世界", "😀👍🏽", "𝔘𝔫𝔦 🦜 ꙮ ᚠᛇ, ﬁne", "  two  spaces\n\tand a tab"]
)
def test_real_text_one_token_at_a_time(tok, text):
    ids = tok.encode(text)
    deltas = stream(tok, ids)
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == tok.decode(ids) == text


@needs_model
def test_byte_fallback_is_held_until_the_character_completes(tok):
    ids = tok.encode("ꙮ!")  # not in the vocabulary: three byte-fallback ids
    assert [tok.byte_value(i) for i in ids[:3]] == list("ꙮ".encode())
    det = IncrementalDetokenizer(tok)
    assert [det.step([i]) for i in ids] == ["", "", "ꙮ", "!"]
    assert det.flush() == ""


@needs_model
def test_invalid_bytes_become_replacement_only_when_unrepairable(tok):
    det = IncrementalDetokenizer(tok)
    assert det.step([BYTE + 0xE4]) == ""  # could still become 你
    assert det.step([BYTE + 0xBD]) == ""
    b = tok.token_id("b")
    assert det.step([b]) == tok.decode([BYTE + 0xE4, BYTE + 0xBD, b])  # now it cannot
    assert det.step([BYTE + 0xFF]).count("\ufffd") == 1  # never valid: emitted at once
    assert det.step([BYTE + 0xF0, BYTE + 0x9F]) == ""
    assert det.flush() == tok.decode([BYTE + 0xF0, BYTE + 0x9F])  # truncated at the end
    assert det.flush() == ""


@needs_model
def test_special_tokens_skipped_or_written(tok):
    ids = tok.encode("<s>hi<eoa>")
    assert "".join(stream(tok, ids)) == "hi"
    assert "".join(stream(tok, ids, skip_special_tokens=False)) == "<s>hi<eoa>"


@needs_model
def test_prompt_context(tok):
    prompt = tok.encode("<s><|User|>:hi\n<|Bot|>:")
    answer = tok.encode(" Hello world, 世界 🦜")
    deltas = stream(tok, answer, prompt_ids=prompt)
    full = tok.decode(prompt + answer)
    assert "".join(deltas) == full[len(tok.decode(prompt)) :] == " Hello world, 世界 🦜"


# Token ids biased towards byte-fallback ids and the specials, where the hard cases are.
_ids = st.lists(
    st.one_of(
        st.integers(0, 103167),
        st.integers(BYTE + 0x80, BYTE + 0xFF),
        st.integers(BYTE, BYTE + 0x7F),
        st.sampled_from([0, 1, 2, 262, 387, EOA, 103027]),
    ),
    max_size=40,
)


@needs_model
@settings(max_examples=400, deadline=None)
@given(ids=_ids, chunks=st.lists(st.integers(0, 4), max_size=10), skip=st.booleans())
def test_random_ids_concatenate_to_decode(tok, ids, chunks, skip):
    deltas = stream(tok, ids, chunks, skip_special_tokens=skip)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=skip)


@needs_model
@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=30), chunks=st.lists(st.integers(0, 4), max_size=10))
def test_random_text_streams_without_replacement_chars(tok, text, chunks):
    ids = tok.encode(text)
    deltas = stream(tok, ids, chunks)
    if "\ufffd" not in text:
        assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == tok.decode(ids)


@settings(max_examples=300, deadline=None)
@given(ids=_ids.map(lambda ids: [i if i < 259 else i % 259 for i in ids]), skip=st.booleans())
def test_byte_tokenizer_random_ids(ids, skip):
    bt = ByteTokenizer()
    deltas = stream(bt, ids, skip_special_tokens=skip)
    assert "".join(deltas) == bt.decode(ids, skip_special_tokens=skip)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=30))
def test_byte_tokenizer_text_has_whole_characters(text):
    bt = ByteTokenizer()
    deltas = stream(bt, bt.encode(text), skip_special_tokens=False)  # text may hold "<eoh>"
    assert "".join(deltas) == text
    assert all(d == "" or d in text for d in deltas)
    if "\ufffd" not in text:
        assert not any("\ufffd" in d for d in deltas)


class CountingTokenizer(ByteTokenizer):
    """Counts the ids each decode call sees."""

    def __init__(self) -> None:
        self.decoded = 0

    def decode(self, ids, skip_special_tokens=True):
        self.decoded += len(ids)
        return super().decode(ids, skip_special_tokens)


def test_step_cost_does_not_grow_with_the_answer():
    counter = CountingTokenizer()
    ids = counter.encode("chunk of text 你好 🦜 " * 200)
    det = IncrementalDetokenizer(counter, prompt_ids=counter.encode("a long prompt " * 100))
    text = "".join(det.step([i]) for i in ids) + det.flush()
    assert text == "chunk of text 你好 🦜 " * 200
    # a full re-decode per step would see ~len(ids)**2 / 2 ids
    assert counter.decoded <= 10 * len(ids)
