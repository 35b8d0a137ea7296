"""Stop strings over streamed text: stop at the right character even when a stop string spans
several tokens, and keep it out of the output.

The engine feeds each detokenizer delta to a request's ``StopStringMatcher``; the matcher holds
back the longest tail that could still begin a stop string, so text that turns out to be part of
a stop string is never emitted.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopStringMatcher:
    """Finds the first stop string in a stream of text deltas.

    ``feed(delta)`` returns ``(text_to_emit, matched)``: ``matched`` is the stop string found (the
    request is finished; the text after it is dropped) or None. When several stop strings occur,
    the one that is complete first (ends earliest) wins, the longer one on a tie, because that is
    where a token-by-token stream would have stopped. With ``include_stop_str_in_output`` the stop
    string itself ends the emitted text. Call ``flush()`` when the request finishes for another
    reason (EOS, stop token, length) to get the held-back tail.
    """

    def __init__(self, stop: Iterable[str], include_stop_str_in_output: bool = False) -> None:
        self.stop = tuple(s for s in dict.fromkeys(stop) if s)  # unique, non-empty, in order
        self.include_stop_str_in_output = include_stop_str_in_output
        self.matched: str | None = None
        self._held = ""
        self._max_len = max((len(s) for s in self.stop), default=0)

    @property
    def is_stopped(self) -> bool:
        return self.matched is not None

    def feed(self, delta: str) -> tuple[str, str | None]:
        """Add a text delta; return the text now safe to emit and the matched stop string."""
        if self.matched is not None:
            return "", self.matched
        if not self.stop:
            return delta, None
        text = self._held + delta
        best: tuple[int, int, str] | None = None  # (end, -length, stop string)
        for s in self.stop:
            start = text.find(s)
            if start >= 0 and (best is None or (start + len(s), -len(s)) < best[:2]):
                best = (start + len(s), -len(s), s)
        if best is not None:
            end, neg_len, s = best
            self.matched, self._held = s, ""
            return text[: end if self.include_stop_str_in_output else end + neg_len], s
        keep = self._partial_tail(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep], None

    def flush(self) -> str:
        """The held-back text (a tail that began a stop string that never completed)."""
        held, self._held = self._held, ""
        return "" if self.matched is not None else held

    def _partial_tail(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        for k in range(min(len(text), self._max_len - 1), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0
