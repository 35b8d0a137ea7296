"""The OpenAI-compatible server through the official ``openai`` client, against a real uvicorn
server on 127.0.0.1 serving the tiny random model on the CPU."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

openai = pytest.importorskip("openai")

GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}
SHORT_CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hi."},
]


@pytest.fixture(scope="module")
def client(api_server):
    return openai.OpenAI(base_url=f"{api_server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def aclient(api_server):
    """A factory: an AsyncOpenAI client belongs to the event loop it first runs in."""
    return lambda: openai.AsyncOpenAI(
        base_url=f"{api_server.url}/v1", api_key="unused", max_retries=0
    )


def test_models_lists_the_served_model(client, api_server):
    (model,) = client.models.list().data
    assert model.id == api_server.llm.model_name == "internlm-tiny"


def test_chat_completion_reports_text_usage_and_finish(client, api_server):
    out = client.chat.completions.create(
        model="internlm-tiny", messages=SHORT_CHAT, max_tokens=5, **GREEDY
    )
    (choice,) = out.choices
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert out.usage.completion_tokens == 5
    prompt = api_server.llm.template.render(SHORT_CHAT)
    assert out.usage.prompt_tokens == len(api_server.llm.tokenizer.encode(prompt))
    assert out.usage.total_tokens == out.usage.prompt_tokens + 5
    # greedy is deterministic: the server's answer is the engine's own
    llm = api_server.llm
    expected = llm.chat(
        SHORT_CHAT, llm.sampling_params(max_tokens=5, temperature=0, ignore_eos=True)
    )
    assert choice.message.content == expected.text


def test_streamed_chat_matches_the_whole_answer(client):
    whole = client.chat.completions.create(
        messages=SHORT_CHAT, max_tokens=6, model="internlm-tiny", **GREEDY
    )
    stream = client.chat.completions.create(
        model="internlm-tiny", messages=SHORT_CHAT, max_tokens=6, stream=True,
        stream_options={"include_usage": True}, **GREEDY,
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text == whole.choices[0].message.content
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_batch_of_prompts_n_and_logprobs(client):
    out = client.completions.create(
        model="internlm-tiny", prompt=["Once upon", "a time"], max_tokens=3, n=2, logprobs=2,
        temperature=0.7, seed=1,
    )  # fmt: skip
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    assert out.usage.completion_tokens == 4 * 3
    assert out.usage.prompt_tokens == len("Once upon") + len("a time")  # byte tokenizer
    for c in out.choices:
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
        assert "".join(lp.tokens) == c.text
        assert all(v <= 0 for v in lp.token_logprobs)
        assert all(1 <= len(top) <= 2 for top in lp.top_logprobs)
    again = client.completions.create(
        model="internlm-tiny", prompt=["Once upon", "a time"], max_tokens=3, n=2, temperature=0.7,
        seed=1,
    )  # fmt: skip
    assert [c.text for c in again.choices] == [c.text for c in out.choices]  # seeded


def test_stop_strings_and_sampling_fields_reach_the_engine(client):
    base = client.completions.create(model="internlm-tiny", prompt="abc", max_tokens=8, **GREEDY)
    text = base.choices[0].text
    stop = text[3:5]
    out = client.completions.create(
        model="internlm-tiny", prompt="abc", max_tokens=8, stop=[stop], **GREEDY
    )
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].text == text[: text.index(stop)]
    # every documented field is accepted together
    out = client.chat.completions.create(
        model="internlm-tiny", messages=SHORT_CHAT, max_tokens=2, temperature=0.5, top_p=0.9,
        presence_penalty=0.5, frequency_penalty=0.5, seed=3, n=2, logprobs=True, top_logprobs=3,
        stop="zzz",
        extra_body={"top_k": 5, "min_p": 0.01, "repetition_penalty": 1.1, "ignore_eos": True},
    )  # fmt: skip
    assert len(out.choices) == 2
    for c in out.choices:
        assert len(c.logprobs.content) == 2
        assert all(len(t.top_logprobs) == 3 for t in c.logprobs.content)


def test_async_client_streams_and_not(aclient):
    make = aclient

    async def main():
        aclient = make()
        whole = await aclient.completions.create(
            model="internlm-tiny", prompt="xyz", max_tokens=4, **GREEDY
        )
        stream = await aclient.completions.create(
            model="internlm-tiny", prompt="xyz", max_tokens=4, stream=True, **GREEDY
        )
        parts = [c.choices[0].text async for c in stream if c.choices]
        return whole.choices[0].text, "".join(parts)

    whole, streamed = asyncio.run(main())
    assert whole == streamed and whole


def test_sixteen_concurrent_streams_finish_with_correct_usage(client, aclient, api_server):
    prompts = [f"prompt number {i}" for i in range(16)]
    max_tokens = [6 + i % 3 for i in range(16)]
    expected = {}  # the same greedy answers, asked in three batches without streaming
    for m in set(max_tokens):
        batch = [i for i in range(16) if max_tokens[i] == m]
        out = client.completions.create(
            model="internlm-tiny", prompt=[prompts[i] for i in batch], max_tokens=m, **GREEDY
        )
        expected.update({batch[c.index]: c.text for c in out.choices})
    aclient = aclient()

    async def one(i):
        stream = await aclient.completions.create(
            model="internlm-tiny", prompt=prompts[i], max_tokens=max_tokens[i], stream=True,
            stream_options={"include_usage": True}, **GREEDY,
        )  # fmt: skip
        text, finish, usage = "", None, None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        return text, finish, usage

    async def main():
        return await asyncio.gather(*(one(i) for i in range(16)))

    results = asyncio.run(main())
    for i, (text, finish, usage) in enumerate(results):
        assert finish == "length"
        assert text == expected[i]
        assert usage.completion_tokens == max_tokens[i]
        assert usage.prompt_tokens == len(prompts[i])  # one byte token per character
    api_server.wait_idle()


def test_client_disconnect_mid_stream_aborts_and_frees_blocks(api_server):
    engine = api_server.engine
    api_server.wait_idle()
    aborted = engine.stats.finished["abort"]
    body = {"prompt": "a long one", "max_tokens": 500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{api_server.url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        events = (line for line in r.iter_lines() if line)
        assert next(events).startswith("data: ") and next(events).startswith("data: ")
        assert len(engine.requests) == 1  # still generating when the client leaves
    api_server.wait_idle()
    assert engine.stats.finished["abort"] == aborted + 1


def test_client_gone_before_a_whole_answer_aborts_it(api_server):
    engine = api_server.engine
    api_server.wait_idle()
    aborted = engine.stats.finished["abort"]
    body = {"prompt": "wait for me", "max_tokens": 1000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{api_server.url}/v1/completions", json=body, timeout=0.5)
    api_server.wait_idle()
    assert engine.stats.finished["abort"] == aborted + 1


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": [""]}, "stop.0"),
        ({"messages": [{"role": "user", "content": "hi"}], "bogus": 1}, "bogus"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}]},
         "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream_options": {}}, "stream_options"),
    ],
)  # fmt: skip
def test_invalid_fields_are_400_with_openai_error_shape(api_server, body, param):
    r = httpx.post(f"{api_server.url}/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_malformed_bodies_are_400_never_500(api_server):
    for content in (b"{not json", b"[]", b"null", b'"text"', '{"prompt": "\u00e9"'.encode()):
        r = httpx.post(
            f"{api_server.url}/v1/completions", content=content,
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert r.status_code == 400, (content, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{api_server.url}/v1/completions", json={"prompt": [1, 2, 10**9]})
    assert r.status_code == 400 and "prompt token ids" in r.json()["error"]["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=SHORT_CHAT)
    assert e.value.body["code"] == "model_not_found"


def test_too_long_prompt_is_400_naming_the_limit(client, api_server):
    session_len = api_server.engine.session_len
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="internlm-tiny", prompt="x" * (session_len + 5))
    assert f"session_len={session_len}" in e.value.body["message"]
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="internlm-tiny", prompt="x", max_tokens=session_len)
    assert f"session_len={session_len}" in e.value.body["message"]


def test_encode_health_docs(api_server):
    url = api_server.url
    r = httpx.post(f"{url}/v1/encode", json={"input": "hi", "add_bos": False})
    assert r.json() == {"input_ids": api_server.llm.tokenizer.encode("hi"), "length": 2}
    r = httpx.post(f"{url}/v1/encode", json={"input": ["a", "bc"], "do_preprocess": True})
    lengths = r.json()["length"]
    assert lengths[1] == lengths[0] + 1
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/docs").status_code == 200
    schema = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/chat/interactive"} <= set(
        schema["paths"]
    )


def test_metrics_count_requests_tokens_and_latencies(client, api_server):
    client.completions.create(model="internlm-tiny", prompt="metrics", max_tokens=3, **GREEDY)
    text = httpx.get(f"{api_server.url}/metrics").text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    stats = api_server.engine.stats
    assert values["nybble_generation_tokens_total"] == stats.generation_tokens > 0
    assert values["nybble_prompt_tokens_total"] == stats.prompt_tokens
    assert values['nybble_http_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert values["nybble_time_to_first_token_seconds_count"] >= 1
    assert values["nybble_inter_token_latency_seconds_count"] >= 2
    for name in (
        "nybble_kv_cache_usage_ratio", "nybble_prefix_cache_hit_rate", "nybble_requests_waiting",
        "nybble_engine_sequences_waiting", "nybble_requests_running",
    ):  # fmt: skip
        assert name in values


def test_raw_sse_framing_ends_with_done(api_server):
    body = {"messages": SHORT_CHAT, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{api_server.url}/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][len("data: ") :])
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
