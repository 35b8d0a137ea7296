"""What every route shares: the model, the asyncio engine, admission, metrics; and
``Generation``, the engine requests of one HTTP request, which end when the client leaves."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from core.async_engine import AsyncEngine, RequestStream
from core.engine import RequestError
from core.outputs import RequestOutput
from core.sampling_params import SamplingParams
from plugins.frontends.api_errors import APIError, bad_request
from plugins.frontends.api_limits import Admission, Slot
from plugins.frontends.api_metrics import Metrics
from plugins.frontends.api_schemas import ErrorResponse

# the error answers every API route documents (OpenAPI), besides its own
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 503)
}
CLIENT_CLOSED = 499  # nginx's "client closed request": what the metrics count for a client gone


class ServerContext:
    """The served model and the machinery around it; one per app (``app.state.ctx``)."""

    def __init__(self, llm: Any, frontend: Any) -> None:
        self.llm = llm
        self.engine = AsyncEngine(llm.engine)
        self.tokenizer = llm.tokenizer
        self.template = llm.template
        self.model_name: str = llm.model_name
        self.session_len: int = llm.engine.session_len
        self.default_max_tokens: int = llm.cfg.sampling.max_new_tokens
        self.admission = Admission(frontend.max_running_requests, frontend.max_queued_requests)
        self.metrics = Metrics(self.engine, self.admission)
        self.created = int(time.time())
        self._ids = itertools.count()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:16]}"

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def check_healthy(self) -> None:
        """503 once a step has failed: the engine's state can no longer be trusted."""
        if self.engine.errored is not None:
            raise APIError(
                503,
                f"the engine failed ({self.engine.errored!r}) and takes no more requests; "
                "restart the server",
                code="engine_failed",
            )

    async def tokenize(self, text: str, add_bos: bool = False) -> list[int]:
        return await run_in_threadpool(self.tokenizer.encode, text, add_bos)

    def sampling_params(self, fields: dict[str, Any], prompt_len: int) -> SamplingParams:
        """Params from the config's defaults and the fields the client set. Without
        ``max_tokens`` the answer may take the rest of the session, up to the default."""
        fields = dict(fields)
        room = self.session_len - prompt_len
        if fields.get("max_tokens") is None and room > 0:
            fields["max_tokens"] = min(self.default_max_tokens, room)
        try:
            return self.llm.sampling_params(**fields)
        except ValueError as e:
            raise bad_request(e) from None

    async def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        session_id: str | None = None,
        param: str = "prompt",
    ) -> RequestStream:
        """Hand one request to the engine; a refusal becomes a 400 that names the limit."""
        history = len(self.llm.engine.sessions.get(session_id, ())) if session_id else 0
        try:
            return await self.engine.add_request(
                prompt_ids, params, f"{param}-{next(self._ids)}", session_id
            )
        except RequestError as e:
            total = history + len(prompt_ids) + (params.max_tokens or 1)
            code = "context_length_exceeded" if total > self.session_len else None
            raise APIError(400, str(e), param=param, code=code) from None

    async def start(
        self, prompts: list[list[int]], params: SamplingParams, param: str
    ) -> Generation:
        """Wait for admission, then submit one engine request per prompt."""
        self.check_healthy()
        slot = await self.admission.acquire()
        gen = Generation([], slot)
        try:
            for ids in prompts:
                gen.streams.append(await self.submit(ids, params, param=param))
        except BaseException:
            gen.close()
            raise
        return gen


def context(request: Request) -> ServerContext:
    """The app's ServerContext (a FastAPI dependency of every route)."""
    return request.app.state.ctx


class Generation:
    """The engine requests of one HTTP request (one per prompt) and its admission slot.

    ``close`` (synchronous, idempotent) aborts what still runs and frees the slot; every path
    out of a handler calls it, including a cancelled stream whose client disconnected.
    """

    def __init__(self, streams: list[RequestStream], slot: Slot | None) -> None:
        self.streams = streams
        self.slot = slot
        self.cancelled = False
        self._tasks: list[asyncio.Task] = []

    def cancel(self, engine: AsyncEngine) -> None:
        """Abort the requests on behalf of another client; their streams end with
        finish_reason "abort", so whoever reads them still gets an answer."""
        self.cancelled = True
        for stream in self.streams:
            engine.abort_soon(stream.request_id)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        for task in self._tasks:
            task.cancel()
        if self.slot is not None:
            self.slot.release()

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """``(prompt index, output)`` as the engine produces them, all prompts interleaved."""
        if len(self.streams) == 1:
            async for out in self.streams[0]:
                yield 0, out
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, stream: RequestStream) -> None:
            try:
                async for out in stream:
                    queue.put_nowait((i, out))
            except Exception as e:  # handed to the consumer, which raises it
                queue.put_nowait((i, e))
            queue.put_nowait((i, None))

        self._tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        remaining = len(self.streams)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item

    async def final_outputs(self, request: Request) -> list[RequestOutput]:
        """Each prompt's final output; a client that disconnects first aborts them all."""
        finals: list[RequestOutput | None] = [None] * len(self.streams)

        async def collect() -> None:
            async for i, out in self.outputs():
                if out.finished:
                    finals[i] = out

        work = asyncio.create_task(collect())
        gone = asyncio.create_task(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                raise APIError(CLIENT_CLOSED, "the client closed the request")
            work.result()
        finally:
            work.cancel()
            gone.cancel()
            self.close()
        return [f for f in finals if f is not None]


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
