"""Real uvicorn servers on 127.0.0.1 (a free port each), in a thread of the test process, so a
test can look at the engine behind the HTTP API (its requests and KV blocks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

# the tiny random model, with room for 16 streams at once; fp32 on the CPU
ENGINE = [
    "engine=cpu-small",
    "engine.max_batch_size=16",
    "sampling.max_new_tokens=8",
    "frontend=api",
]


@dataclass
class Server:
    url: str  # http://127.0.0.1:<port>
    llm: Any
    app: Any

    @property
    def engine(self) -> Any:
        return self.llm.engine

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until the engine holds no request and every KV block is free (or cached)."""
        bm, deadline = self.engine.block_manager, time.monotonic() + timeout
        while self.engine.requests or bm.num_free_blocks != bm.num_blocks:
            assert time.monotonic() < deadline, (
                f"engine not idle after {timeout}s: {len(self.engine.requests)} requests, "
                f"{bm.num_free_blocks}/{bm.num_blocks} blocks free"
            )
            time.sleep(0.02)


def serve(overrides: Sequence[str]) -> Iterator[Server]:
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from core.llm import LLM
    from plugins.frontends.api import build_app

    llm = LLM(overrides=[*ENGINE, *overrides])
    app = build_app(llm, llm.cfg.frontend)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Server(f"http://127.0.0.1:{port}", llm, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def api_server() -> Iterator[Server]:
    """Open to everyone, generous limits."""
    yield from serve([])


@pytest.fixture(scope="session")
def limited_server() -> Iterator[Server]:
    """API keys, CORS, one running request and one waiting, a 2 KiB body cap."""
    yield from serve(
        [
            "frontend.api_keys=[sekret,other-key]",
            "frontend.cors_origins=[http://example.com]",
            "frontend.max_running_requests=1",
            "frontend.max_queued_requests=1",
            "frontend.max_body_bytes=2048",
        ]
    )
