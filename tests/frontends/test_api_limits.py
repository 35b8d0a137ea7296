"""API keys, CORS, the body cap and the running/waiting caps, on a server configured with
``frontend.api_keys``, ``cors_origins``, ``max_running_requests=1``, ``max_queued_requests=1``
and ``max_body_bytes=2048`` (conftest.limited_server)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

AUTH = {"Authorization": "Bearer sekret"}


def test_without_a_valid_key_every_api_route_is_401(limited_server):
    url = limited_server.url
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.models.list()
    assert e.value.body["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/v1/models").status_code == 401  # no key at all
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(f"{url}/v1/chat/interactive", json={"prompt": "x"})
    assert r.status_code == 401
    # probes and scrapers need no key
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 200


def test_any_configured_key_is_accepted(limited_server):
    for key in ("sekret", "other-key"):
        client = openai.OpenAI(base_url=f"{limited_server.url}/v1", api_key=key, max_retries=0)
        out = client.completions.create(model="internlm-tiny", prompt="hi", max_tokens=2)
        assert out.usage.completion_tokens <= 2


def test_cors_allows_the_configured_origin_only(limited_server):
    def preflight(origin):
        return httpx.options(
            f"{limited_server.url}/v1/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )

    ok = preflight("http://example.com")
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "http://example.com"
    assert "access-control-allow-origin" not in preflight("http://evil.example").headers


def test_bodies_over_the_cap_are_413(limited_server):
    url = f"{limited_server.url}/v1/completions"
    big = {"prompt": "x" * 4000, "max_tokens": 1}
    r = httpx.post(url, json=big, headers=AUTH)
    assert r.status_code == 413
    assert r.json()["error"]["message"] == "the request body is larger than 2048 bytes"

    def chunks():  # no Content-Length: the server counts what arrives
        for _ in range(8):
            yield b" " * 512
        yield b'{"prompt": "x"}'

    r = httpx.post(url, content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413
    small = httpx.post(
        url, content=iter([b'{"prompt": "hi",', b' "max_tokens": 1}']),
        headers={**AUTH, "content-type": "application/json"},
    )  # fmt: skip
    assert small.status_code == 200, small.text


def test_past_the_running_and_waiting_caps_requests_get_429(limited_server):
    url = limited_server.url
    limited_server.wait_idle()
    admission = limited_server.app.state.ctx.admission
    long = {"prompt": "hold the slot", "max_tokens": 400, "ignore_eos": True, "stream": True}
    queued: dict = {}

    def waiting_request():
        queued["response"] = httpx.post(
            f"{url}/v1/completions", json={"prompt": "next", "max_tokens": 2}, headers=AUTH,
            timeout=60,
        )  # fmt: skip

    with httpx.stream("POST", f"{url}/v1/completions", json=long, headers=AUTH) as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # kept: a dropped iterator closes the connection
        assert next(lines).startswith("data: ")  # it runs
        waiter = threading.Thread(target=waiting_request)
        waiter.start()
        deadline = time.monotonic() + 10
        while admission.num_waiting < 1:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.01)
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, headers=AUTH)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        error = r.json()["error"]
        assert error["type"] == "rate_limit_error" and "max_running_requests=1" in error["message"]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sekret", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="internlm-tiny", prompt="x", max_tokens=1)
    # the first stream's client left: its slot goes to the waiting request
    waiter.join(timeout=30)
    assert queued["response"].status_code == 200
    assert queued["response"].json()["usage"]["completion_tokens"] == 2
    limited_server.wait_idle()
    assert admission.num_running == 0 and admission.num_waiting == 0
    metrics = httpx.get(f"{url}/metrics").text
    assert 'nybble_http_requests_total{endpoint="/v1/completions",status="429"} 2.0' in metrics
