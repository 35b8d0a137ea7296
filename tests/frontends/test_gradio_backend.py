"""The web UI's backends without a browser: server-side sessions on the in-process engine, the
OpenAI streaming client for a remote server, Stop, and the messages a failed turn shows."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

from core.llm import LLM
from plugins.frontends.gradio_backend import (
    BackendError,
    LocalBackend,
    RemoteBackend,
    Settings,
    make_backend,
)
from plugins.frontends.gradio_turns import BusyError, Turns, until_stopped

GREEDY = Settings(max_new_tokens=6, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(overrides=["engine=cpu-small"])


def spy_on_engine(backend: LocalBackend) -> list:
    """Record every (prompt, final RequestOutput) the backend's AsyncEngine serves."""
    seen = []
    generate = backend.engine.generate

    async def recording(prompt, params=None, request_id=None, session_id=None):
        out = None
        async for out in generate(prompt, params, request_id, session_id):
            yield out
        seen.append((prompt, out))

    backend.engine.generate = recording
    return seen


async def answer(backend, session, history, text, settings=GREEDY) -> str:
    return "".join([d async for d in backend.stream(session, history, text, settings)])


def test_local_follow_up_turn_sends_only_the_new_message_and_hits_the_prefix_cache(llm):
    backend = LocalBackend(llm)
    seen = spy_on_engine(backend)
    template = llm.template

    async def main():
        first = await answer(backend, "tab", [], "hello")
        history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first}]
        await answer(backend, "tab", history, "and again")
        await answer(backend, "other", [], "hello")  # another tab: its own session
        await backend.end("tab")

    asyncio.run(main())
    (p1, o1), (p2, o2), (p3, _) = seen
    assert p1 == template.render([{"role": "user", "content": "hello"}])
    # max new tokens cut the first answer short, so its end-of-answer marker is added
    assert p2 == template.eoa + template.render_next_turn("and again")
    assert o2.usage.cached_tokens >= len(o1.prompt_token_ids) - llm.cfg.engine.block_size
    assert o2.prompt_token_ids[: len(o1.prompt_token_ids)] == o1.prompt_token_ids
    assert p3 == p1
    assert "tab" not in llm.engine.sessions and "other" in llm.engine.sessions
    asyncio.run(backend.end("other"))


def test_local_system_prompt_is_rendered_and_a_new_one_starts_the_session_over(llm):
    backend = LocalBackend(llm)
    seen = spy_on_engine(backend)
    pirate = Settings(**{**GREEDY.__dict__, "system_prompt": "Talk like a pirate."})

    async def main():
        first = await answer(backend, "s", [], "hi", pirate)
        history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": first}]
        await answer(backend, "s", history, "more", GREEDY)  # the system prompt was cleared
        await backend.end("s")
        return history

    history = asyncio.run(main())
    assert seen[0][0].startswith(llm.template.bos + llm.template.system + "Talk like a pirate.")
    # the whole conversation again, with the model's default system prompt
    assert seen[1][0] == llm.template.render([*history, {"role": "user", "content": "more"}])


def test_local_stop_aborts_the_request_and_the_session_stays_usable(llm):
    backend = LocalBackend(llm)
    long = Settings(**{**GREEDY.__dict__, "max_new_tokens": 400})
    turns = Turns()

    async def main():
        turn = turns.begin("s")
        with pytest.raises(BusyError):
            turns.begin("s")
        deltas = []
        async for delta in until_stopped(backend.stream("s", [], "hello", long), turn.stop):
            deltas.append(delta)
            if len(deltas) == 3:
                assert turns.stop("s")
        turns.finish("s", turn)
        await asyncio.sleep(0.05)
        assert not llm.engine.has_unfinished()  # the request was aborted, not left running
        follow_up = await answer(backend, "s", [], "go on")
        await backend.end("s")
        return deltas, follow_up

    deltas, follow_up = asyncio.run(main())
    assert len(deltas) == 3 and follow_up
    assert not turns.stop("s")


def test_local_over_long_prompt_and_bad_settings_are_backend_errors(llm):
    backend = LocalBackend(llm)

    async def main():
        with pytest.raises(BackendError, match="session_len"):
            await answer(backend, "s", [], "x" * (llm.engine.session_len + 10))
        with pytest.raises(BackendError, match="top_p"):
            await answer(backend, "s", [], "hi", Settings(**{**GREEDY.__dict__, "top_p": 0.0}))
        assert "s" not in llm.engine.sessions
        assert await backend.describe() == "internlm-tiny"

    asyncio.run(main())


def sse(*chunks: dict | str) -> bytes:
    return b"".join(
        f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n".encode() for c in chunks
    )


def delta(text: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


def test_remote_streams_openai_chat_completions_with_the_whole_conversation():
    requests = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "internlm-x"}]})
        assert request.url.path == "/v1/chat/completions"
        body = sse(
            {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}, delta("Hel"), delta("lo"),
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, "[DONE]",
        )  # fmt: skip
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    settings = Settings(64, 0.5, 0.9, 7, 1.1, "Be brief.")

    async def main():
        backend = RemoteBackend("http://api:1/", "key", transport=httpx.MockTransport(handler))
        deltas = [d async for d in backend.stream("tab", history, "c", settings)]
        name = await backend.describe()
        await backend.aclose()
        return deltas, name

    deltas, name = asyncio.run(main())
    assert deltas == ["Hel", "lo"]
    assert name == "internlm-x (server http://api:1)"
    chat = requests[1]
    assert chat.headers["authorization"] == "Bearer key"
    assert json.loads(chat.content) == {
        "model": "internlm-x",
        "messages": [{"role": "system", "content": "Be brief."}, *history,
                     {"role": "user", "content": "c"}],
        "stream": True, "max_tokens": 64, "temperature": 0.5, "top_p": 0.9, "top_k": 7,
        "repetition_penalty": 1.1, "user": "tab",
    }  # fmt: skip
    assert len(requests) == 2  # the model's name was asked once


@pytest.mark.parametrize(
    "status,payload,expected",
    [
        (400, {"error": {"message": "prompt too long: 5000 tokens"}}, "(400): prompt too long"),
        (422, {"detail": [{"msg": "bad top_k"}]}, "(422): [{'msg': 'bad top_k'}]"),
        (200, None, "the API server failed: engine died"),
    ],
)
def test_remote_errors_become_messages(status, payload, expected):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        if payload is None:  # an error in the middle of the stream
            body = sse(delta("x"), {"error": {"message": "engine died"}})
            return httpx.Response(200, content=body)
        return httpx.Response(status, json=payload)

    async def main():
        backend = RemoteBackend("http://api:1", transport=httpx.MockTransport(handler))
        with pytest.raises(BackendError) as e:
            await answer(backend, "s", [], "hi")
        return str(e.value)

    assert expected in asyncio.run(main())


def test_remote_unreachable_server_is_a_message_not_a_hang():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    async def main():
        backend = make_backend(None, url)
        name = await backend.describe()
        with pytest.raises(BackendError) as e:
            await answer(backend, "s", [], "hi")
        return name, str(e.value)

    name, error = asyncio.run(main())
    assert name.startswith(f"unknown model: cannot reach the API server at {url}")
    assert error.startswith(f"cannot reach the API server at {url}")


def test_until_stopped_closes_an_iterator_that_is_still_waiting():
    closed = []

    async def silent():
        try:
            yield "first"
            await asyncio.sleep(3600)  # a long prefill, a server that says nothing
            yield "never"
        finally:
            closed.append(True)

    async def main():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        return [x async for x in until_stopped(silent(), stop)]

    assert asyncio.run(asyncio.wait_for(main(), 5)) == ["first"]
    assert closed == [True]


def test_make_backend_needs_an_llm_or_a_url():
    with pytest.raises(ValueError, match="server_url"):
        make_backend(None, None)
