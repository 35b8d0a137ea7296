"""The server as a whole: ``nybble frontend=api`` serves, and a failing engine is reported
(an error event in the stream it broke, 503 on /health and on new requests)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.frontends.conftest import serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nybble_frontend_api_serves_until_interrupted():
    pytest.importorskip("uvicorn")
    port = free_port()
    cmd = [
        sys.executable, "-c", "from core.cli import main; main()", "model=internlm-tiny",
        "engine=cpu-small", "frontend=api", f"frontend.port={port}", "frontend.api_keys=[k1]",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the server did not come up in 90 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/v1/completions"
        body = {"prompt": "hi", "max_tokens": 2}
        assert httpx.post(url, json=body).status_code == 401  # frontend.api_keys applies
        r = httpx.post(url, json=body, headers={"Authorization": "Bearer k1"})
        assert r.status_code == 200 and r.json()["model"] == "internlm-tiny"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/docs" in out


def test_a_failing_engine_step_is_reported_not_hung():
    server = serve([])
    s = next(server)
    try:
        engine, real_step = s.engine, s.engine.step
        calls = 0

        def step():
            nonlocal calls
            calls += 1
            if calls == 3:
                raise RuntimeError("device lost")
            return real_step()

        engine.step = step
        body = {"prompt": "x", "max_tokens": 50, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{s.url}/v1/completions", json=body, timeout=30) as r:
            events = [line[len("data: ") :] for line in r.iter_lines() if line]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert "device lost" in error["message"] and error["type"] == "internal_server_error"
        health = httpx.get(f"{s.url}/health")
        assert health.status_code == 503 and health.json()["error"]["code"] == "engine_failed"
        r = httpx.post(f"{s.url}/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 503
    finally:
        server.close()
