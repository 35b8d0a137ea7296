"""core/stop_strings.py: stop strings found across deltas, cut at the right character."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.stop_strings import StopStringMatcher


def run(stop, deltas, include=False):
    """Feed deltas until a stop; return (emitted text, matched stop)."""
    m = StopStringMatcher(stop, include_stop_str_in_output=include)
    out = []
    for d in deltas:
        text, matched = m.feed(d)
        out.append(text)
        if matched is not None:
            return "".join(out), matched
    return "".join(out) + m.flush(), None


def test_stop_spanning_deltas():
    assert run(["<eoa>"], ["Hello", " wor", "ld<e", "o", "a>", "ignored"]) == (
        "Hello world",
        "<eoa>",
    )


def test_partial_stop_is_held_then_released():
    m = StopStringMatcher(["STOP"])
    assert m.feed("abc ST") == ("abc ", None)  # "ST" could begin STOP
    assert m.feed("OR") == ("STOR", None)  # it did not
    assert m.feed("S") == ("", None)
    assert m.flush() == "S"  # finished for another reason: nothing is lost


def test_include_stop_string():
    assert run(["\nUser:"], ["Sure.\nUs", "er: hi"], include=True) == ("Sure.\nUser:", "\nUser:")


def test_text_after_the_stop_in_one_delta_is_dropped():
    m = StopStringMatcher(["###"])
    assert m.feed("answer### more") == ("answer", "###")
    assert m.is_stopped
    assert m.feed("even more") == ("", "###")
    assert m.flush() == ""


def test_earliest_completed_stop_wins():
    # "bc" completes at "abc" before "abcd" could; a stream would have stopped there
    assert run(["abcd", "bc"], ["a", "b", "c", "d"]) == ("a", "bc")
    # same end: the longer one (starting earlier) wins
    assert run(["bc", "abc"], ["xab", "c"]) == ("x", "abc")
    # order of the list does not matter
    assert run(["x", "yz"], ["ayz x"]) == ("a", "yz")


def test_held_tail_uses_the_longest_possible_prefix():
    # "aab" ends with "ab" (a prefix of "abc") and "b" is not one of "aab": hold "ab"
    m = StopStringMatcher(["abc", "bd"])
    assert m.feed("aab") == ("a", None)
    assert m.feed("d") == ("a", "bd")


def test_no_stop_strings_passes_text_through():
    m = StopStringMatcher([])
    assert m.feed("abc") == ("abc", None)
    assert StopStringMatcher(["", ""]).feed("x") == ("x", None)


@pytest.mark.parametrize("unicode_stop", ["。\n", "🛑"])
def test_unicode_stop(unicode_stop):
    assert run([unicode_stop], ["好的", unicode_stop[0], unicode_stop[1:] + "后"]) == (
        "好的",
        unicode_stop,
    )


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab<eo>", max_size=30),
    stops=st.lists(st.text(alphabet="ab<eo>", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=8),
    include=st.booleans(),
)
def test_matches_a_search_of_the_whole_text(text, stops, cuts, include):
    """However the text is cut into deltas, the result is that of scanning it whole."""
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    deltas = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    found = [(text.find(s) + len(s), -len(s), s) for s in stops if s in text]
    if found:
        end, neg_len, s = min(found)
        expected = (text[: end if include else end + neg_len], s)
    else:
        expected = (text, None)
    assert run(stops, deltas, include) == expected
