"""One streaming ``/v1/chat/completions`` request, timed chunk by chunk.

A small HTTP/1.1 client on asyncio streams (standard library only, so the benchmark runs where
aiohttp and httpx are not installed): it POSTs the request with ``"stream": true``, reads the
server-sent events (chunked or connection-delimited body) and records when each content chunk
arrives. Anything short of a 200 answer whose stream ends with ``data: [DONE]`` is a failure,
kept with its reason.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_ERROR_BODY = 2000  # bytes of an error answer kept for the message


@dataclass
class StreamResult:
    """What one request saw. Times are seconds from ``start`` (a perf_counter reading)."""

    start: float = 0.0
    ok: bool = False
    error: str = ""
    ttft: float = 0.0  # first content chunk
    latency: float = 0.0  # end to end: request sent -> [DONE]
    chunk_times: list[float] = field(default_factory=list)  # each content chunk's arrival
    text: str = ""
    usage: dict | None = None  # the server's usage block, when it sends one

    @property
    def itl(self) -> list[float]:
        """Inter-token latencies: the gaps between successive content chunks."""
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]


class HTTPError(RuntimeError):
    pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = (await reader.readline()).decode("latin-1").strip()
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise HTTPError(f"not an HTTP answer: {status_line[:80]!r}")
    headers = {}
    while True:
        line = (await reader.readline()).decode("latin-1")
        if line in ("\r\n", "\n", ""):
            return int(parts[1]), headers
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]):
    """The body's bytes as they come: chunked, Content-Length or until the connection closes."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)  # CRLF after each chunk
            yield data
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            data = await reader.read(min(left, 65536))
            if not data:
                raise HTTPError(f"connection closed with {left} bytes of the body unread")
            left -= len(data)
            yield data
    else:
        while data := await reader.read(65536):
            yield data


async def stream_chat(url: str, payload: dict, timeout: float) -> StreamResult:
    """POST ``payload`` (streaming) to ``url``; never raises for a failed request: the result
    says ``ok=False`` and why."""
    result = StreamResult(start=time.perf_counter())
    try:
        await asyncio.wait_for(_stream(url, payload, result), timeout)
        result.latency = time.perf_counter() - result.start
        result.ok = True
    except asyncio.TimeoutError:
        result.error = f"no complete answer within {timeout:g} s"
    except (OSError, HTTPError, asyncio.IncompleteReadError, ValueError) as e:
        result.error = f"{type(e).__name__}: {e}"
    return result


async def _stream(url: str, payload: dict, result: StreamResult) -> None:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    reader, writer = await asyncio.open_connection(
        parts.hostname, port, ssl=ssl.create_default_context() if secure else None
    )
    try:
        body = json.dumps(payload).encode()
        head = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        status, headers = await _read_head(reader)
        if status != 200:
            text = b""
            async for data in _body(reader, headers):
                text += data
                if len(text) > MAX_ERROR_BODY:
                    break
            raise HTTPError(f"HTTP {status}: {text[:MAX_ERROR_BODY].decode(errors='replace')}")
        await _read_events(reader, headers, result)
    finally:
        writer.close()


async def _read_events(reader, headers, result: StreamResult) -> None:
    buffer = b""
    async for data in _body(reader, headers):
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event: / id: fields
            event = line[5:].strip()
            if event == b"[DONE]":
                return
            chunk = json.loads(event)
            if "error" in chunk:
                raise HTTPError(f"error event: {chunk['error']}")
            if chunk.get("usage"):
                result.usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    now = time.perf_counter() - result.start
                    if not result.chunk_times:
                        result.ttft = now
                    result.chunk_times.append(now)
                    result.text += content
    raise HTTPError("the stream ended without data: [DONE]")
