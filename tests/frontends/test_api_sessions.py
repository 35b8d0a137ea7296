"""POST /v1/chat/interactive, the seed's session API: the server keeps the conversation."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

GREEDY = {"temperature": 0, "ignore_eos": True}


def ask(server, **body) -> dict:
    r = httpx.post(f"{server.url}/v1/chat/interactive", json={**GREEDY, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_session_keeps_the_conversation_and_reuses_its_cache(api_server):
    engine, template = api_server.engine, api_server.llm.template
    first = ask(api_server, prompt="Hello!", session_id=11, interactive_mode=True,
                request_output_len=4)  # fmt: skip
    assert first["tokens"] == 4 and first["finish_reason"] == "length"
    assert first["history_tokens"] == 0 and first["session_id"] == 11
    rendered = template.render([{"role": "user", "content": "Hello!"}])
    assert first["input_tokens"] == len(api_server.llm.tokenizer.encode(rendered))
    hits = engine.block_manager.num_prefix_hits

    second = ask(api_server, prompt="And then?", session_id=11, interactive_mode=True,
                 request_output_len=3)  # fmt: skip
    assert second["history_tokens"] == first["input_tokens"] + first["tokens"]
    # only the new turn is sent (the cut-short answer is closed with eoa first)
    turn = template.eoa + template.render_next_turn("And then?")
    assert second["input_tokens"] == len(api_server.llm.tokenizer.encode(turn))
    bs = engine.block_manager.block_size
    assert engine.block_manager.num_prefix_hits - hits >= second["history_tokens"] // bs * bs - bs

    last = ask(
        api_server, prompt="Bye.", session_id=11, interactive_mode=False, request_output_len=2
    )
    assert last["history_tokens"] == (
        second["history_tokens"] + second["input_tokens"] + second["tokens"]
    )  # the last turn still continues the conversation
    api_server.wait_idle()
    assert "interactive-11" not in engine.sessions  # interactive_mode=false ended it
    again = ask(api_server, prompt="Hello!", session_id=11, request_output_len=1)
    assert again["history_tokens"] == 0


def test_streamed_turn_is_json_lines_and_matches_the_whole_answer(api_server):
    whole = ask(api_server, prompt="Count.", session_id=12, request_output_len=5)
    body = {**GREEDY, "prompt": "Count.", "session_id": 13, "stream": True, "request_output_len": 5}
    with httpx.stream("POST", f"{api_server.url}/v1/chat/interactive", json=body) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert "".join(x["text"] for x in lines) == whole["text"]
    assert lines[-1]["finish_reason"] == "length" and lines[-1]["tokens"] == 5
    assert all(x["finish_reason"] is None for x in lines[:-1])


def test_stop_cancels_the_running_request_and_keeps_the_session(api_server):
    engine = api_server.engine
    body = {**GREEDY, "prompt": "Talk.", "session_id": 21, "interactive_mode": True,
            "stream": True, "request_output_len": 500}  # fmt: skip
    with httpx.stream("POST", f"{api_server.url}/v1/chat/interactive", json=body) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["finish_reason"] is None  # it runs
        r2 = httpx.post(
            f"{api_server.url}/v1/chat/interactive", json={"prompt": "x", "session_id": 21}
        )
        assert r2.status_code == 409 and r2.json()["error"]["code"] == "session_busy"
        stopped = ask(api_server, prompt="", session_id=21, stop=True)
        assert stopped["finish_reason"] == "abort"
        rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["finish_reason"] == "abort" and rest[-1]["tokens"] < 500
    api_server.wait_idle()
    history = len(engine.sessions["interactive-21"])
    nxt = ask(api_server, prompt="Go on.", session_id=21, interactive_mode=True,
              request_output_len=2)  # fmt: skip
    assert nxt["history_tokens"] == history
    ask(api_server, prompt="", session_id=21, request_output_len=0)  # only ends it
    assert "interactive-21" not in engine.sessions


def test_disconnect_mid_stream_aborts_the_turn(api_server):
    engine = api_server.engine
    api_server.wait_idle()
    body = {**GREEDY, "prompt": "Long.", "session_id": 31, "interactive_mode": True,
            "stream": True, "request_output_len": 500}  # fmt: skip
    with httpx.stream("POST", f"{api_server.url}/v1/chat/interactive", json=body) as r:
        lines = r.iter_lines()
        next(lines)
        assert len(engine.requests) == 1
    api_server.wait_idle()
    # the partial answer stays in the session, and the session is free for the next turn
    nxt = ask(api_server, prompt="Shorter.", session_id=31, interactive_mode=True,
              request_output_len=1)  # fmt: skip
    assert nxt["history_tokens"] > 0


def test_new_session_ids_and_refusals(api_server):
    a = ask(api_server, prompt="Hi.", session_id=-1, interactive_mode=True, request_output_len=1)
    b = ask(api_server, prompt="Hi.", interactive_mode=True, request_output_len=1)
    assert a["session_id"] != b["session_id"] and a["session_id"] > 0
    for sid in (a["session_id"], b["session_id"]):
        ask(api_server, prompt="", session_id=sid, request_output_len=0)
    url = f"{api_server.url}/v1/chat/interactive"
    for body, param in [
        ({"prompt": "x", "interactive_mode": True, "request_output_len": 0}, "request_output_len"),
        ({"prompt": "x", "session_id": -7}, "session_id"),
        ({"prompt": [{"role": "robot", "content": "x"}]}, "prompt.0.role"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
    ]:
        r = httpx.post(url, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("n", [3])
def test_sessions_run_concurrently(api_server, n):
    results = {}

    def chat(sid):
        results[sid] = ask(api_server, prompt="Hi.", session_id=100 + sid, request_output_len=3)

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(results[i]["tokens"] == 3 for i in range(n))
    api_server.wait_idle()
