"""Fixtures for the request benchmarks: a small ShareGPT-style file and a fake OpenAI server.

The file holds short conversations (a few bytes each, so the tiny model on a CPU serves them in
seconds with the byte tokenizer), records the filters drop, and a tail cut off mid-record like
the packaged ShareGPT file's. The fake server streams /v1/chat/completions the way OpenAI-style
servers do (chunked server-sent events, a usage chunk, ``data: [DONE]``) and fails on purpose
for prompts that carry a marker.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

FAIL = "[fail]"  # the fake server answers 500
CUT = "[cut]"  # the fake server drops the connection mid-stream

# (human, gpt): distinct prompts of 8+ bytes, answers of 5-12 bytes (tokens, byte tokenizer)
PAIRS = [
    ("Name a colour.", "Blue, mostly."),
    ("Count to three.", "One two three"),
    ("What is 2 + 2?", "It is four."),
    ("Say something kind.", "You did well."),
    ("Give me a fruit.", "A ripe pear."),
    ("Where is Paris?", "In France."),
    ("Pick a number.", "Seven, then."),
    ("Spell cat.", "C, A, T."),
    ("Is water wet?", "It wets."),
    ("Name a planet.", "Mars is red."),
    (f"{FAIL} Describe rain.", "Falling water."),
    (f"{CUT} Describe snow.", "Frozen water."),
]
DROPPED = [
    {"id": "short", "conversations": [{"from": "human", "value": "Hi"},
                                      {"from": "gpt", "value": "Hello there!"}]},
    {"id": "gpt-first", "conversations": [{"from": "gpt", "value": "I start."},
                                          {"from": "human", "value": "Then I answer."}]},
    {"id": "one-turn", "conversations": [{"from": "human", "value": "Anyone there?"}]},
    {"id": "long", "conversations": [{"from": "human", "value": "x" * 1100},
                                     {"from": "gpt", "value": "Too long a prompt."}]},
]  # fmt: skip


def sharegpt_records() -> list[dict]:
    records = [
        {
            "id": f"c{i}",
            "conversations": [{"from": "human", "value": h}, {"from": "gpt", "value": g}],
        }
        for i, (h, g) in enumerate(PAIRS)
    ]
    return records[:6] + DROPPED + records[6:]


@pytest.fixture
def sharegpt_file(tmp_path: Path) -> Path:
    """The records, pretty-printed like ShareGPT's file, with a truncated record at the end."""
    text = json.dumps(sharegpt_records(), indent=2)
    cut = json.dumps([{"id": "cut", "conversations": [{"from": "human", "value": "never end"}]}])
    path = tmp_path / "sharegpt-slice.json"
    path.write_text(text[:-2] + ",\n" + cut[1:30], encoding="utf-8")
    return path


class FakeOpenAI:
    """An OpenAI-style streaming chat server on 127.0.0.1 (its own thread and event loop).

    It streams one chunk per requested token (``max_tokens`` of them, one character each) with
    ``token_delay`` between chunks, and records every request body.
    """

    def __init__(self, token_delay: float = 0.002) -> None:
        self.token_delay = token_delay
        self.bodies: list[dict] = []
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        assert self.started.wait(10), "fake server did not start"
        self.url = f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.started.set()
        self.loop.run_forever()

    def close(self) -> None:
        """Stop serving, cancel the answers still streaming, end the thread."""

        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await reader.readline()
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
            self.bodies.append(body)
            assert request_line.startswith(b"POST /v1/chat/completions ")
            prompt = body["messages"][-1]["content"]
            if FAIL in prompt:
                err = json.dumps({"error": {"message": "asked to fail", "code": 500}}).encode()
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: "
                             b"application/json\r\nContent-Length: %d\r\n\r\n" % len(err) + err)  # fmt: skip
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
            n = body["max_tokens"]
            for i in range(n):
                if CUT in prompt and i == 2:
                    return  # connection dropped mid-answer
                delta = {"role": "assistant", "content": "x"} if i == 0 else {"content": "y"}
                await self._event(writer, {"choices": [{"index": 0, "delta": delta}]})
                await asyncio.sleep(self.token_delay)
            await self._event(writer, {"choices": [], "usage": {
                "prompt_tokens": len(prompt) + 10, "completion_tokens": n,
                "total_tokens": len(prompt) + 10 + n}})  # fmt: skip
            await self._event(writer, "[DONE]")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()

    @staticmethod
    async def _event(writer: asyncio.StreamWriter, data) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        payload = f"data: {text}\n\n".encode()
        writer.write(b"%x\r\n" % len(payload) + payload + b"\r\n")
        await writer.drain()


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    yield server
    server.close()
