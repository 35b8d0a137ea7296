"""An asyncio front for the engine: a background loop steps it; requests are async iterators."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator

from core.engine import Engine, RequestError
from core.outputs import RequestOutput
from core.sampling_params import SamplingParams


class RequestStream:
    """The outputs of one request, in order, as an async iterator.

    ``close()`` aborts the request if it has not finished. It is synchronous on purpose: a
    server's cancelled task (a client that disconnected) cannot await anything in its
    ``finally``, but it can always close its streams.
    """

    def __init__(self, engine: AsyncEngine, request_id: str, queue: asyncio.Queue) -> None:
        self.request_id = request_id
        self.finished = False
        self._engine = engine
        self._queue = queue

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise RuntimeError(f"the engine failed: {item!r}") from item
        if item.finished:
            self.finished = True
            self._engine._forget(self.request_id)
        return item

    def close(self) -> None:
        """Abort the request (if still running) and free its KV blocks; idempotent."""
        if not self.finished:
            self.finished = True
            self._engine._forget(self.request_id)
            self._engine.abort_soon(self.request_id)


class AsyncEngine:
    """Runs ``Engine.step`` in a worker thread while the event loop serves clients.

    ``add_request`` queues a request (raising ``RequestError`` at once if it can never be
    served) and returns its ``RequestStream``; ``generate`` is the same as one ``async for``,
    and leaving it early (a client that disconnects) aborts the request and frees its blocks.
    Aborts are applied by the stepping loop between two steps, so they never wait for a step.

    Every engine call runs in a worker thread under one lock, so the event loop never blocks
    on a step. Call the methods from the event loop's thread.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()  # the engine is touched by one thread at a time
        self._queues: dict[str, asyncio.Queue] = {}
        self._aborts: deque[str] = deque()  # request ids to abort before the next step
        self._last_token_time: dict[str, float] = {}  # request id -> its latest output's time
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._ids = itertools.count()
        self.errored: BaseException | None = None

    # ---- the stepping loop ---------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def _step(self) -> list[RequestOutput]:
        with self._lock:
            outputs = []
            while self._aborts:  # their final outputs (finish_reason "abort") go out too
                out = self.engine.abort(self._aborts.popleft())
                if out is not None:
                    outputs.append(out)
            if self.engine.has_unfinished():
                outputs += self.engine.step()
            return outputs

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self.engine.has_unfinished() and not self._aborts:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                outputs = await loop.run_in_executor(None, self._step)
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # a broken step must not hang every client
                self.errored = e
                for q in self._queues.values():
                    q.put_nowait(e)
                raise
            now = time.monotonic()
            for out in outputs:
                self._record_latency(out, now)
                q = self._queues.get(out.request_id)
                if q is not None:
                    q.put_nowait(out)

    def _record_latency(self, out: RequestOutput, now: float) -> None:
        rid = out.request_id
        if any(o.delta_token_ids for o in out.outputs):
            last = self._last_token_time.get(rid)
            if last is not None:
                self.engine.stats.on_inter_token(now - last)
            self._last_token_time[rid] = now
        if out.finished:
            self._last_token_time.pop(rid, None)

    # ---- requests ------------------------------------------------------------------------
    async def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        session_id: str | None = None,
    ) -> RequestStream:
        """Queue a request and return its stream; raises ``RequestError`` (a ValueError) if the
        engine can never serve it (too long, empty, a duplicate id)."""
        self._ensure_loop()
        request_id = request_id or f"async-{next(self._ids)}"
        if request_id in self._queues:
            raise RequestError(f"request id {request_id!r} is already running")
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = queue  # before the engine can produce its first output

        def _add() -> None:
            with self._lock:
                self.engine.add_request(prompt, params, request_id, session_id)

        try:
            await asyncio.get_running_loop().run_in_executor(None, _add)
        except BaseException:
            self._queues.pop(request_id, None)
            self.abort_soon(request_id)  # in case it was added after all (a cancelled await)
            raise
        assert self._wakeup is not None
        self._wakeup.set()
        return RequestStream(self, request_id, queue)

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        session_id: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Add a request and yield its outputs; leaving early aborts it."""
        stream = await self.add_request(prompt, params, request_id, session_id)
        try:
            async for out in stream:
                yield out
        finally:
            stream.close()

    def _forget(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    def abort_soon(self, request_id: str) -> None:
        """Abort a request before the next step (never blocks; unknown ids are ignored). Its
        stream, if still read, ends with an output whose finish_reason is "abort"."""
        self._aborts.append(request_id)
        if self._wakeup is not None:
            self._wakeup.set()

    async def abort(self, request_id: str) -> None:
        """Abort a request now and free its KV blocks."""
        self._queues.pop(request_id, None)

        def _abort() -> None:
            with self._lock:
                self.engine.abort(request_id)

        await asyncio.get_running_loop().run_in_executor(None, _abort)

    async def end_session(self, session_id: str) -> bool:
        """Abort the session's running requests and forget its conversation."""

        def _end() -> bool:
            with self._lock:
                return self.engine.end_session(session_id)

        return await asyncio.get_running_loop().run_in_executor(None, _end)

    async def shutdown(self) -> None:
        """Stop the stepping loop and abort every request (a server's shutdown)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except (asyncio.CancelledError, Exception):
                pass
            self._loop_task = None

        def _abort_all() -> None:
            with self._lock:
                for rid in list(self.engine.requests):
                    self.engine.abort(rid)

        await asyncio.get_running_loop().run_in_executor(None, _abort_all)
        self._queues.clear()

    # ---- state for metrics and admission -------------------------------------------------
    @property
    def num_running(self) -> int:
        """Requests the engine holds (running or waiting for a batch slot)."""
        return len(self.engine.requests)

    @property
    def is_healthy(self) -> bool:
        return self.errored is None
