"""The inference callables behind nybble's two Triton models, over one shared engine.

PyTriton calls each model's callable on an event loop of that model's own thread, so the two
models cannot share an ``AsyncEngine`` (it belongs to one loop). ``EngineLoop`` runs the
AsyncEngine on a loop of its own and hands each request's outputs over to the caller's loop;
requests from both models then share the engine's continuous batching.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from core.async_engine import AsyncEngine
from core.engine import Engine, RequestError
from core.outputs import RequestOutput
from core.sampling_params import SamplingParams
from plugins.frontends.triton_request import InvalidRequest, parse_request, response

_END = object()  # a request's last output has been handed over


class EngineLoop:
    """An AsyncEngine stepping on an event loop in a thread of its own; ``generate`` may be
    called from any other event loop."""

    def __init__(self, engine: Engine) -> None:
        self.loop = asyncio.new_event_loop()
        self.engine = AsyncEngine(engine)
        self._thread = threading.Thread(target=self.loop.run_forever, name="nybble-engine")
        self._thread.daemon = True
        self._thread.start()

    async def generate(
        self, prompt: str | list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """The request's outputs as they come; raises RequestError if it can never be served.
        Leaving early (or being cancelled) aborts the request and frees its KV blocks."""
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def hand_over(item: Any) -> None:
            if not caller.is_closed():
                caller.call_soon_threadsafe(queue.put_nowait, item)

        async def pump() -> None:
            try:
                async for out in self.engine.generate(prompt, params):
                    hand_over(out)
            except Exception as e:
                hand_over(e)
            else:
                hand_over(_END)

        future = asyncio.run_coroutine_threadsafe(pump(), self.loop)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()  # a no-op when finished; else cancels pump, which aborts the request

    def close(self, timeout: float = 10.0) -> None:
        """Abort every request and stop the loop."""
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.engine.shutdown(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        self.loop.close()


class GenerateModels:
    """The callables PyTriton binds: ``infer`` (one response with the whole text) and
    ``infer_stream`` (decoupled: a response per piece of new text)."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.engine_loop = EngineLoop(llm.engine)

    def _render_chat(self, text: str) -> str:
        return self.llm.template.render([{"role": "user", "content": text}])

    async def _outputs(self, inputs: dict[str, np.ndarray]) -> AsyncIterator[RequestOutput]:
        request = parse_request(inputs, self.llm.sampling_params, self._render_chat)
        stream = self.engine_loop.generate(request.prompt, request.params)
        try:
            async for out in stream:
                yield out
        except RequestError as e:  # too long, empty, token ids outside the vocabulary
            raise InvalidRequest(str(e)) from None
        finally:
            await stream.aclose()

    async def infer(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """Triton model ``<model>``: one request (the model does not batch), one response."""
        (request,) = requests
        last = None
        async for out in self._outputs(request.data):
            last = out
        assert last is not None and last.finished
        return [response(last, streamed=False)]

    async def infer_stream(self, requests: list[Any]) -> AsyncIterator[list[dict[str, Any]]]:
        """Triton model ``<model>_stream`` (decoupled): a response whenever new text arrives,
        the last one carrying the finish reason."""
        (request,) = requests
        async for out in self._outputs(request.data):
            if out.finished or out.outputs[0].delta_token_ids:
                yield [response(out, streamed=True)]

    def close(self) -> None:
        self.engine_loop.close()
