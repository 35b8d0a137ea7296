"""The gradio web chat in a real browser (Debian's chromium driven by playwright).

One UI on the in-process tiny model and one on an OpenAI-compatible streaming server are
started per module on 127.0.0.1; one chromium serves every test, a tab per browser session.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytest.importorskip(
    "playwright.sync_api",
    reason="the Python playwright package is not installed (.ci/run installs it)",
)
if not CHROMIUM.exists():
    pytest.skip(
        f"no chromium at {CHROMIUM} (.ci/run installs Debian's chromium)", allow_module_level=True
    )

import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402

from core.compose import compose_config  # noqa: E402
from core.llm import LLM  # noqa: E402
from plugins.frontends import gradio as gradio_ui  # noqa: E402

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TIMEOUT_MS = 30_000
# gradio's queue uses pandas options that pandas 3 deprecates: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
FAKE_WORDS = [f"word{i} " for i in range(30)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="nybble-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def start_ui(llm, overrides: list[str]):
    port = free_port()
    cfg = compose_config(
        ["model=internlm-tiny", "engine=cpu-small", "frontend=gradio", f"frontend.port={port}",
         *overrides]
    )  # fmt: skip
    demo = gradio_ui.launch(llm, cfg, block=False)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(overrides=["engine=cpu-small"])


@pytest.fixture(scope="module")
def local_url(llm):
    demo, url = start_ui(llm, [])
    yield url
    demo.close()


@pytest.fixture(scope="module")
def local_page(browser, local_url) -> Page:
    """One tab on the in-process UI, shared by the local tests (each leaves it reset)."""
    page = open_chat(browser, local_url, "internlm-tiny")
    yield page
    page.close()


class ThreadServer:
    """An ASGI app served by uvicorn in a thread on a free port of 127.0.0.1."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(5)


class FakeOpenAIServer(ThreadServer):
    """A tiny OpenAI-compatible chat server: streams FAKE_WORDS, one every 50 ms, and records
    what it was sent and whether the client went away mid-answer."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.disconnects = 0
        app = FastAPI()
        app.get("/v1/models")(self.models)
        app.post("/v1/chat/completions")(self.chat)
        super().__init__(app)

    async def models(self):
        return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    async def chat(self, request: Request):
        body = await request.json()
        self.bodies.append(body)
        if len(body["messages"][-1]["content"]) > 1000:
            error = {"message": "the prompt has 1500 tokens, more than session_len=1024 allows"}
            return JSONResponse({"error": error}, status_code=400)

        async def events():
            try:
                for word in FAKE_WORDS[: body["max_tokens"]]:
                    chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                    await asyncio.sleep(0.05)
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                self.disconnects += 1
                raise

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def fake_api():
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def nybble_api():
    """``nybble frontend=api`` on its own tiny model (its engine steps on uvicorn's loop)."""
    api = pytest.importorskip("plugins.frontends.api", reason="the API server is not here")
    server_llm = LLM(overrides=["engine=cpu-small"])
    with ThreadServer(api.build_app(server_llm, server_llm.cfg.frontend)) as server:
        yield server_llm, server.url


@pytest.fixture(scope="module")
def remote_url(fake_api):
    demo, url = start_ui(None, [f"frontend.server_url={fake_api.url}"])
    yield url
    demo.close()


# ---- the page, as a user sees it ----------------------------------------------------------


def open_chat(browser, url: str, model: str) -> Page:
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#message textarea")
    page.wait_for_function(
        "m => document.querySelector('#model-name').innerText.includes(m)", arg=model
    )
    return page


def set_setting(page: Page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} input[type=number], #{elem_id} textarea").first
    field.fill(str(value))
    field.press("Tab")


def send(page: Page, text: str) -> None:
    page.fill("#message textarea", text)
    page.press("#message textarea", "Enter")


def answers(page: Page) -> list[str]:
    return page.locator('#chatbot [data-testid="bot"]').all_inner_texts()


def status(page: Page) -> str:
    return page.inner_text("#status").strip()


def watch_answer(page: Page) -> None:
    """Record the length of the last answer each time the DOM changes."""
    page.evaluate(
        """() => {
        window.answerLengths = [];
        new MutationObserver(() => {
            const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
            const n = bots.length ? bots[bots.length - 1].innerText.length : 0;
            if (n && window.answerLengths.at(-1) !== n) window.answerLengths.push(n);
        }).observe(document.querySelector('#chatbot'),
                   {subtree: true, childList: true, characterData: true});
    }"""
    )


def wait_answer_updates(page: Page, n: int) -> list[int]:
    page.wait_for_function(f"window.answerLengths.length >= {n}")
    return page.evaluate("window.answerLengths")


def wait_idle(page: Page, num_answers: int) -> None:
    """Wait until the page shows ``num_answers`` answers and no answer is running."""
    page.wait_for_function(
        """n => document.querySelectorAll('#chatbot [data-testid="bot"]').length === n
            && !document.querySelector('#status').innerText.includes('generating')""",
        arg=num_answers,
    )


# ---- tests ----------------------------------------------------------------------------------


def test_answer_streams_then_stop_keeps_the_conversation_usable_and_reset_clears_it(
    local_page, llm, tmp_path
):
    page = local_page
    set_setting(page, "system-prompt", "Be brief.")
    set_setting(page, "max-new-tokens", 400)
    set_setting(page, "temperature", 0)
    watch_answer(page)
    send(page, "hello")
    lengths = wait_answer_updates(page, 3)
    assert lengths == sorted(lengths) and len(set(lengths)) >= 3  # the text grew, update by update
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').innerText.includes('stopped')")
    stopped = answers(page)[-1]
    time.sleep(0.5)
    assert answers(page)[-1] == stopped and len(stopped) < 400
    assert not llm.engine.has_unfinished()  # Stop aborted the engine request

    set_setting(page, "max-new-tokens", 4)
    send(page, "go on")
    wait_idle(page, 2)
    assert status(page) == "" and answers(page)[-1]
    (session_tokens,) = llm.engine.sessions.values()  # one session holds both turns
    assert len(session_tokens) > 2 * len("Be brief.")
    page.screenshot(path=tmp_path / "chat.png", full_page=True)
    assert (tmp_path / "chat.png").stat().st_size > 10_000

    page.click("#reset")
    wait_idle(page, 0)
    assert status(page) == "new conversation"
    assert page.locator('#chatbot [data-testid="user"]').count() == 0
    assert llm.engine.sessions == {}


def test_tabs_are_separate_sessions_answered_at_once(browser, llm, local_url, local_page):
    pages = [local_page, open_chat(browser, local_url, "internlm-tiny")]
    for page in pages:
        set_setting(page, "system-prompt", "Be brief.")
        set_setting(page, "max-new-tokens", 12)
    most_running = 0
    for page, text in zip(pages, ["first tab", "second tab"]):
        send(page, text)
    deadline = time.monotonic() + 30
    while llm.engine.has_unfinished() or any(status(p) for p in pages):
        most_running = max(most_running, len(llm.engine.requests))
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for page, text in zip(pages, ["first tab", "second tab"]):
        assert page.locator('#chatbot [data-testid="user"]').all_inner_texts() == [text]
        assert len(answers(page)) == 1
    assert most_running == 2  # both answers were in the engine's batch together
    assert len(llm.engine.sessions) == 2
    for page in pages:
        page.click("#reset")
        wait_idle(page, 0)
    pages[1].close()
    assert llm.engine.sessions == {}


def test_too_long_prompt_shows_a_message_in_the_page(local_page, llm):
    page = local_page
    too_long = "x" * (llm.engine.session_len + 100)
    send(page, too_long)
    page.wait_for_function("document.querySelector('#status').innerText.includes('⚠')")
    assert "session_len=2048" in status(page)
    assert "Traceback" not in page.inner_text("body")
    assert page.input_value("#message textarea") == too_long  # given back to edit
    assert answers(page) == []
    page.fill("#message textarea", "")


def test_remote_mode_streams_from_an_openai_server_sending_the_conversation(
    browser, fake_api, remote_url
):
    page = open_chat(browser, remote_url, "fake-model")
    set_setting(page, "max-new-tokens", 5)
    watch_answer(page)
    send(page, "hi")
    wait_idle(page, 1)
    assert answers(page) == ["".join(FAKE_WORDS[:5]).strip()]
    assert len(set(page.evaluate("window.answerLengths"))) >= 2

    set_setting(page, "max-new-tokens", 30)
    send(page, "more")
    wait_answer_updates(page, 8)
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').innerText.includes('stopped')")
    last = fake_api.bodies[-1]
    assert [m["role"] for m in last["messages"]] == ["user", "assistant", "user"]
    assert last["messages"][1]["content"].strip() == "".join(FAKE_WORDS[:5]).strip()
    assert last["stream"] is True and last["model"] == "fake-model"
    deadline = time.monotonic() + 5
    while not fake_api.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_api.disconnects == 1  # Stop closed the stream: the server can abort

    send(page, "y" * 1500)
    page.wait_for_function("document.querySelector('#status').innerText.includes('⚠')")
    assert "session_len=1024" in status(page)
    page.close()


def test_unreachable_server_shows_a_message_in_the_page(browser):
    dead = f"http://127.0.0.1:{free_port()}"
    demo, url = start_ui(None, [f"frontend.server_url={dead}"])
    try:
        page = open_chat(browser, url, "cannot reach the API server")
        send(page, "hello")
        page.wait_for_function("document.querySelector('#status').innerText.includes('⚠')")
        assert status(page).startswith(f"⚠️ cannot reach the API server at {dead}")
        assert answers(page) == []
        page.close()
    finally:
        demo.close()


def test_remote_mode_on_the_nybble_api_server(browser, nybble_api):
    server_llm, api_url = nybble_api
    demo, url = start_ui(None, [f"frontend.server_url={api_url}"])
    try:
        page = open_chat(browser, url, "internlm-tiny (server")
        set_setting(page, "system-prompt", "Be brief.")
        set_setting(page, "max-new-tokens", 400)
        watch_answer(page)
        send(page, "hello")
        lengths = wait_answer_updates(page, 3)
        assert lengths == sorted(lengths)
        page.click("#stop")
        page.wait_for_function("document.querySelector('#status').innerText.includes('stopped')")
        deadline = time.monotonic() + 5
        while server_llm.engine.has_unfinished():  # the closed stream aborted the request
            assert time.monotonic() < deadline
            time.sleep(0.05)

        set_setting(page, "max-new-tokens", 4)
        send(page, "go on")
        wait_idle(page, 2)
        assert status(page) == "" and answers(page)[-1]

        send(page, "z" * server_llm.engine.session_len)
        page.wait_for_function("document.querySelector('#status').innerText.includes('⚠')")
        assert "session_len" in status(page) and "(400)" in status(page)
        page.close()
    finally:
        demo.close()
