"""An asyncio front for the engine: a background loop steps it; requests are async iterators."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator

from core.engine import Engine
from core.outputs import RequestOutput
from core.sampling_params import SamplingParams


class AsyncEngine:
    """Runs ``Engine.step`` in one worker thread while the event loop serves clients.

    ``generate`` adds a request and yields its outputs; leaving the ``async for`` early (a
    client that disconnects) aborts the request and frees its blocks.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()  # the engine is touched by one thread at a time
        self._queues: dict[str, asyncio.Queue] = {}
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._ids = itertools.count()
        self.errored: BaseException | None = None

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def _step(self) -> list[RequestOutput]:
        with self._lock:
            return self.engine.step()

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self.engine.has_unfinished():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                outputs = await loop.run_in_executor(None, self._step)
            except BaseException as e:  # a broken step must not hang every client
                self.errored = e
                for q in self._queues.values():
                    q.put_nowait(e)
                raise
            for out in outputs:
                q = self._queues.get(out.request_id)
                if q is not None:
                    q.put_nowait(out)

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        session_id: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        self._ensure_loop()
        request_id = request_id or f"async-{next(self._ids)}"
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self.engine.add_request(prompt, params, request_id, session_id)
        self._queues[request_id] = queue
        assert self._wakeup is not None
        self._wakeup.set()
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise RuntimeError(f"the engine failed: {item!r}") from item
                finished = item.finished
                yield item
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        loop = asyncio.get_running_loop()

        def _abort() -> None:
            with self._lock:
                self.engine.abort(request_id)

        await loop.run_in_executor(None, _abort)

    async def end_session(self, session_id: str) -> bool:
        with self._lock:
            return self.engine.end_session(session_id)

    @property
    def num_running(self) -> int:
        return len(self.engine.requests)
