"""core/tokenizer.py against InternLM's real SentencePiece model (raw sentencepiece is the
reference) and the offline ByteTokenizer."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.tokenizer import ByteTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer
from tests.conftest import TOKENIZER_PATH as TOKENIZER_MODEL
from tests.conftest import needs_tokenizer

needs_model = needs_tokenizer

SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<eoh>": 103027, "<eoa>": 103028}


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    if not TOKENIZER_MODEL.is_file():
        pytest.skip(f"InternLM tokenizer.model not found at {TOKENIZER_MODEL}")
    return SentencePieceTokenizer(TOKENIZER_MODEL)


@pytest.fixture(scope="module")
def sp():
    """Raw sentencepiece: the independent reference."""
    if not TOKENIZER_MODEL.is_file():
        pytest.skip(f"InternLM tokenizer.model not found at {TOKENIZER_MODEL}")
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(TOKENIZER_MODEL))


# ---- SentencePieceTokenizer ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("<|User|>:", [333, 352, 1621, 352, 27232]),
        ("<|Bot|>:", [333, 352, 23845, 352, 27232]),
        ("\n", [364]),
        ("你好，世界", [76379, 98899, 67488]),
    ],
)
def test_readme_ids(tok, text, ids):
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


def test_special_ids_and_vocab(tok):
    assert tok.vocab_size == 103168
    assert tok.bos_token_id == 1
    assert tok.eos_token_id == 2
    assert tok.special_tokens.items() >= SPECIALS.items()
    for piece, i in SPECIALS.items():
        assert tok.token_id(piece) == i
        assert tok.id_to_piece(i) == piece


def test_token_id_of_pieces(tok, sp):
    assert tok.token_id("▁hello") == sp.piece_to_id("▁hello") == 24176
    assert tok.token_id("<0xE4>") == 231
    with pytest.raises(KeyError, match="not a piece"):
        tok.token_id("no such piece ☃☃☃")


def test_byte_value(tok):
    assert tok.byte_value(3) == 0x00
    assert tok.byte_value(3 + 0xE4) == 0xE4
    assert tok.byte_value(262) is None  # "▁"
    assert tok.byte_value(103028) is None


def test_encode_splits_special_tokens(tok, sp):
    text = "<s>hello</s>a<eoa><eoh>\n<s>"
    expected = [1] + sp.encode("hello") + [2] + sp.encode("a") + [103028, 103027]
    expected += sp.encode("\n") + [1]
    assert tok.encode(text) == expected
    # raw sentencepiece would spell "<s>" with ordinary pieces
    assert sp.encode("<s>") != [1]


def test_encode_add_bos(tok, sp):
    assert tok.encode("hi", add_bos=True) == [1] + sp.encode("hi")
    assert tok.encode("", add_bos=True) == [1]
    assert tok.encode("") == []


def test_decode_special_tokens(tok, sp):
    ids = [1] + sp.encode("Hi there") + [103028, 2]
    assert tok.decode(ids) == "Hi there"
    assert tok.decode(ids, skip_special_tokens=False) == "<s>Hi there<eoa></s>"
    assert tok.decode([0]) == ""
    assert tok.decode([0], skip_special_tokens=False) == "<unk>"


def test_decode_rejects_out_of_range(tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([103168])


_text_with_specials = st.lists(
    st.one_of(st.text(max_size=20), st.sampled_from(sorted(SPECIALS))), max_size=8
).map("".join)


@needs_model
@settings(max_examples=200, deadline=None)
@given(text=_text_with_specials)
def test_round_trip_with_specials(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids, skip_special_tokens=False) == text


@needs_model
@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40).filter(lambda t: "<" not in t))
def test_plain_text_matches_sentencepiece(tok, sp, text):
    assert tok.encode(text) == sp.encode(text)
    assert tok.decode(tok.encode(text)) == text


# ---- ByteTokenizer ---------------------------------------------------------------------------


def test_byte_tokenizer_ids():
    bt = ByteTokenizer()
    assert isinstance(bt, Tokenizer)
    assert bt.vocab_size == 103168
    assert (bt.bos_token_id, bt.eos_token_id) == (1, 2)
    assert bt.special_tokens == SPECIALS
    assert bt.encode("A") == [3 + 0x41]
    assert bt.encode("<s>A<eoa>", add_bos=True) == [1, 1, 3 + 0x41, 103028]
    assert bt.encode("你") == [3 + 0xE4, 3 + 0xBD, 3 + 0xA0]
    assert bt.id_to_piece(3 + 0xE4) == "<0xE4>"
    assert bt.token_id("<0xE4>") == 3 + 0xE4
    assert bt.byte_value(3 + 0xE4) == 0xE4 and bt.byte_value(259) is None
    with pytest.raises(KeyError):
        bt.token_id("hello")


def test_byte_tokenizer_stand_in_ids_are_printable():
    bt = ByteTokenizer()
    text = bt.decode(list(range(259, 103027, 997)))
    assert text and text.isprintable()
    assert bt.decode([103028, 2]) == ""
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bt.decode([-1])


@settings(max_examples=300, deadline=None)
@given(text=_text_with_specials)
def test_byte_tokenizer_round_trip(text):
    bt = ByteTokenizer()
    ids = bt.encode(text)
    assert bt.decode(ids, skip_special_tokens=False) == text
    # skipping the specials leaves exactly the bytes between them
    assert bt.decode(ids).encode() == b"".join(bytes([i - 3]) for i in ids if 3 <= i < 259)
    if not any(s in text for s in SPECIALS):
        assert bt.decode(ids) == text


# ---- load_tokenizer --------------------------------------------------------------------------


@needs_model
def test_load_model_file_and_folder(tmp_path):
    assert isinstance(load_tokenizer(str(TOKENIZER_MODEL), None), SentencePieceTokenizer)
    assert isinstance(load_tokenizer(str(TOKENIZER_MODEL.parent), None), SentencePieceTokenizer)
    # model.path holding tokenizer.model (a link: the model file is never copied)
    (tmp_path / "tokenizer.model").symlink_to(TOKENIZER_MODEL.resolve())
    assert isinstance(load_tokenizer(None, str(tmp_path)), SentencePieceTokenizer)


def test_load_falls_back_to_byte_tokenizer(tmp_path, caplog):
    assert isinstance(load_tokenizer(None, None), ByteTokenizer)
    with caplog.at_level(logging.WARNING, logger="core.tokenizer"):
        assert isinstance(load_tokenizer(None, str(tmp_path)), ByteTokenizer)
    assert "byte tokenizer" in caplog.text and str(tmp_path) in caplog.text


def test_load_missing_path_names_path_and_fix(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.model"
    with pytest.raises(FileNotFoundError) as err:
        load_tokenizer(str(missing), None)
    assert str(missing) in str(err.value) and "model.tokenizer=" in str(err.value)


def test_load_folder_without_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no tokenizer.model"):
        load_tokenizer(str(tmp_path), None)


def test_load_not_a_sentencepiece_file(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        load_tokenizer(str(bad), None)


def test_sentencepiece_that_refuses_the_null_byte_piece_names_the_fix(tmp_path, monkeypatch):
    """sentencepiece 0.2.2 refuses InternLM's tokenizer.model (its piece 354 is "\\0"): the
    error names the installed version and the versions that load it, not a bad file."""
    import sentencepiece as spm

    def refuse(*args, **kwargs):
        raise RuntimeError("INTERNAL: piece must not include null character.")

    monkeypatch.setattr(spm, "SentencePieceProcessor", refuse)
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\n\x05\n\x01\x00\x15\x00\x00\x00\x00")
    with pytest.raises(RuntimeError, match=r"pip install 'sentencepiece>=0.2.3'") as info:
        SentencePieceTokenizer(path)
    assert spm.__version__ in str(info.value) and str(path) in str(info.value)
