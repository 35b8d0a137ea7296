"""What the server lets in: API keys (401), request body size (413), and how many generation
requests run and wait at once (429 with Retry-After past both caps)."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections import deque
from collections.abc import Sequence

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plugins.frontends.api_errors import APIError, error_body

RETRY_AFTER_S = 1  # what a 429 tells the client to wait; a decode step is far shorter

bearer = HTTPBearer(auto_error=False, description="one of frontend.api_keys, when any are set")


class APIKeys:
    """A FastAPI dependency: with keys configured, ``Authorization: Bearer <key>`` must hold
    one of them (compared in constant time); without keys, everyone is let in."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = [k.encode() for k in keys]

    def __call__(
        self, request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> None:
        if not self.keys:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if not any(hmac.compare_digest(given, k) for k in self.keys):
            raise APIError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with 413, whether its
    Content-Length says so or a chunked body grows past it (then the body is buffered)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self._refuse(send)
            return await self.app(scope, receive, send)
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(send)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        payload = json.dumps(
            error_body(413, f"the request body is larger than {self.max_bytes} bytes")
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class Slot:
    """One admitted request; ``release`` (idempotent) lets the next waiting one run."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._release()


class Admission:
    """At most ``max_running`` generation requests run; up to ``max_queued`` more wait in
    arrival order; past that a request is refused at once (429, Retry-After)."""

    def __init__(self, max_running: int, max_queued: int) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.num_running = 0
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def num_waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> Slot:
        if self.num_running < self.max_running and not self._waiters:
            self.num_running += 1
            return Slot(self)
        if len(self._waiters) >= self.max_queued:
            raise APIError(
                429,
                f"the server is busy: {self.num_running} requests running (max_running_requests="
                f"{self.max_running}) and {len(self._waiters)} waiting (max_queued_requests="
                f"{self.max_queued}); retry later",
                code="server_busy",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # _release hands its running slot over by resolving this future
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot while being cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise
        return Slot(self)

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.num_running -= 1
