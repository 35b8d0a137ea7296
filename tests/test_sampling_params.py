"""SamplingParams: vLLM defaults, normalization, validation messages, helpers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.sampling_params import SamplingParams


def test_defaults_match_vllm():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, -1, 0.0)
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.0, 0.0, 0.0)
    assert p.stop == [] and p.stop_token_ids == []
    assert not p.include_stop_str_in_output and not p.ignore_eos
    assert (p.max_tokens, p.min_tokens, p.seed, p.logprobs) == (16, 0, None, None)
    assert p.skip_special_tokens
    assert not p.is_greedy


def test_stop_string_becomes_list_and_top_k_zero_means_off():
    p = SamplingParams(stop="\n\n", stop_token_ids=(7, 8), top_k=0)
    assert p.stop == ["\n\n"]
    assert p.stop_token_ids == [7, 8]
    assert p.top_k == -1


def test_is_greedy():
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(temperature=1e-7).is_greedy
    assert SamplingParams(temperature=0.7, top_k=1).is_greedy
    assert not SamplingParams(temperature=0.7, top_k=2).is_greedy


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("n", 0, ">= 1"),
        ("temperature", -0.1, ">= 0"),
        ("temperature", math.inf, "finite"),
        ("temperature", math.nan, "finite"),
        ("top_p", 0.0, "(0, 1]"),
        ("top_p", 1.5, "(0, 1]"),
        ("top_k", -2, ">= 1"),
        ("top_k", 2.5, ">= 1"),
        ("min_p", -0.1, "[0, 1]"),
        ("min_p", 1.1, "[0, 1]"),
        ("repetition_penalty", 0.0, "> 0"),
        ("presence_penalty", 2.5, "[-2, 2]"),
        ("frequency_penalty", -3, "[-2, 2]"),
        ("stop", ["ok", ""], "non-empty"),
        ("stop", 5, "string"),
        ("stop_token_ids", [-1], "non-negative"),
        ("max_tokens", 0, ">= 1"),
        ("min_tokens", -1, ">= 0"),
        ("seed", 1.5, "integer"),
        ("seed", "7", "integer"),
        ("logprobs", 21, "[0, 20]"),
        ("logprobs", -1, "[0, 20]"),
    ],
)
def test_invalid_values_name_field_value_and_range(field, value, expected):
    with pytest.raises(ValueError) as info:
        SamplingParams(**{field: value})
    message = str(info.value)
    assert f"SamplingParams.{field}=" in message
    assert repr(value) in message or (field == "stop" and "''" in message)
    assert expected in message


def test_min_tokens_cannot_exceed_max_tokens():
    with pytest.raises(ValueError, match=r"min_tokens=20: expected at most max_tokens=10"):
        SamplingParams(max_tokens=10, min_tokens=20)
    assert SamplingParams(max_tokens=None, min_tokens=20).min_tokens == 20


def test_clone_is_deep_and_replace_validates():
    p = SamplingParams(stop=["a"], seed=3)
    q = p.clone()
    q.stop.append("b")
    assert p.stop == ["a"]
    r = p.replace(temperature=0.5, stop="x")
    assert (r.temperature, r.stop, r.seed) == (0.5, ["x"], 3)
    assert p.temperature == 1.0
    with pytest.raises(ValueError, match="SamplingParams.top_p=0"):
        p.replace(top_p=0)


def _cfg(**kw):
    base = dict(
        temperature=0.8, top_p=0.8, top_k=40, min_p=0.0, repetition_penalty=1.0, max_new_tokens=512
    )
    base.update(kw)
    return SimpleNamespace(**base)


def test_from_defaults_takes_config_and_overrides_win():
    p = SamplingParams.from_defaults(_cfg(repetition_penalty=1.1))
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.max_tokens) == (
        0.8,
        0.8,
        40,
        1.1,
        512,
    )
    q = SamplingParams.from_defaults(_cfg(), temperature=0, max_tokens=None, seed=1)
    assert (q.temperature, q.max_tokens, q.seed, q.top_k) == (0, None, 1, 40)
    with pytest.raises(TypeError, match="max_new_tokens"):
        SamplingParams.from_defaults(_cfg(), max_new_tokens=3)
    with pytest.raises(ValueError, match="SamplingParams.top_p"):
        SamplingParams.from_defaults(_cfg(top_p=2.0))


def test_from_defaults_accepts_the_project_config():
    config = pytest.importorskip("core.config")
    p = SamplingParams.from_defaults(config.SamplingConfig())
    assert p.max_tokens == config.SamplingConfig().max_new_tokens


@given(
    temperature=st.floats(0, 5),
    top_p=st.floats(0, 1, exclude_min=True),
    top_k=st.one_of(st.just(-1), st.integers(0, 1000)),
    min_p=st.floats(0, 1),
    penalty=st.floats(-2, 2),
    max_tokens=st.one_of(st.none(), st.integers(1, 100)),
    logprobs=st.one_of(st.none(), st.integers(0, 20)),
)
def test_valid_values_are_accepted(temperature, top_p, top_k, min_p, penalty, max_tokens, logprobs):
    p = SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        presence_penalty=penalty,
        frequency_penalty=penalty,
        max_tokens=max_tokens,
        min_tokens=0 if max_tokens is None else max_tokens,
        logprobs=logprobs,
    )
    assert p.top_k == -1 or p.top_k >= 1
    assert p.replace() == p
