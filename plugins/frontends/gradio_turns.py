"""The answer each browser tab has running, so that tab's Stop and Reset can end it.

Stop does not cancel gradio's event: it sets the turn's ``stop`` event, the answer's iterator is
closed (which aborts the engine request or closes the HTTP stream) and the handler ends normally,
keeping the partial answer. Reset also marks the turn ``discarded`` so its handler writes nothing
more into the page it just cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Turn:
    """One running answer: ``stop`` is set by Stop or Reset, ``discarded`` by Reset only."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    discarded: bool = False


class BusyError(Exception):
    """The tab already has an answer running."""


class Turns:
    """Running turns by session id; all methods run on the server's event loop."""

    def __init__(self) -> None:
        self._running: dict[str, Turn] = {}

    def begin(self, session_id: str) -> Turn:
        """Register the session's new answer; BusyError if one still runs."""
        if session_id in self._running:
            raise BusyError(session_id)
        turn = self._running[session_id] = Turn()
        return turn

    def finish(self, session_id: str, turn: Turn) -> None:
        """The answer ended (done, stopped or failed)."""
        if self._running.get(session_id) is turn:
            del self._running[session_id]

    def stop(self, session_id: str, discard: bool = False) -> bool:
        """Ask the session's running answer to end; False if none runs."""
        turn = self._running.get(session_id)
        if turn is None:
            return False
        turn.discarded = turn.discarded or discard
        turn.stop.set()
        return True

    @property
    def num_running(self) -> int:
        return len(self._running)


async def until_stopped(items: AsyncIterator[T], stop: asyncio.Event) -> AsyncIterator[T]:
    """The items of ``items`` until ``stop`` is set; either way ``items`` is closed at the end,
    also while it waits for its next item (a prefill, a silent server)."""
    stopped = asyncio.ensure_future(stop.wait())
    pending: asyncio.Future | None = None
    try:
        while True:
            pending = asyncio.ensure_future(items.__anext__())
            await asyncio.wait({pending, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not pending.done():
                return
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        stopped.cancel()
        if pending is not None and not pending.done():
            pending.cancel()  # runs the iterator's cleanup (abort) where it waits
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        with contextlib.suppress(RuntimeError):  # already finished by the cancellation above
            await items.aclose()
