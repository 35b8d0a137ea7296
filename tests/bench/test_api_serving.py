"""nybble-bench task=api_serving: against a fake OpenAI-style server (failures on purpose) and
against nybble's own API server with the tiny model."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest

from bench import api_serving
from bench.chat_stream import stream_chat
from bench.sharegpt import load_records, opening_pairs, sample_requests
from bench.sweep import read_csv
from core.compose import compose_config
from core.tokenizer import ByteTokenizer
from tests.bench.conftest import CUT, FAIL

TINY = ["model=internlm-tiny", "engine=cpu-small"]


def bench_config(tmp_path, dataset, url: str, *overrides: str):
    return compose_config(
        ["task=api_serving", *TINY, f"dataset.path={dataset}", f"output_dir={tmp_path}",
         f"server_url={url}", *overrides],
        config_name="bench",
    )  # fmt: skip


def drawn(dataset, num_prompts: int, levels: int) -> list[list]:
    """The requests each row gets: disjoint slices of one seeded sample."""
    pairs = opening_pairs(load_records(dataset))
    pool = sample_requests(pairs, num_prompts * levels, ByteTokenizer(), seed=0)
    return [pool[k * num_prompts : (k + 1) * num_prompts] for k in range(levels)]


def check_row(r: dict, samples: list) -> None:
    bad = [s for s in samples if FAIL in s.prompt or CUT in s.prompt]
    assert r["num_prompts"] == len(samples)
    assert r["failed"] == len(bad) and r["completed"] == len(samples) - len(bad)
    assert r["completed"] > 0 and r["duration_s"] > 0
    assert (r["top_error"] != "") == bool(bad)
    assert r["output_tok_s"] > 0 and r["request_throughput"] > 0
    assert r["total_tok_s"] > r["output_tok_s"]
    assert math.isclose(r["output_tok_s"], r["output_tokens"] / r["duration_s"], rel_tol=1e-3)
    for m in api_serving.LATENCIES:
        assert r[f"{m}_mean_ms"] > 0 and r[f"{m}_median_ms"] <= r[f"{m}_p99_ms"]
    assert r["ttft_mean_ms"] <= r["e2el_mean_ms"] and r["ttft_p99_ms"] <= r["e2el_p99_ms"]
    assert r["tpot_median_ms"] <= r["e2el_median_ms"]


def test_closed_loop_against_a_fake_server(tmp_path, sharegpt_file, fake_openai):
    cfg = bench_config(tmp_path, sharegpt_file, fake_openai.url, "num_prompts=6",
                       "concurrency=[1,3]")  # fmt: skip
    api_serving.run(cfg)
    (csv_path,) = tmp_path.glob("api_serving-*.csv")
    table = read_csv(csv_path)
    assert list(table[0]) == api_serving.COLUMNS
    assert [r["concurrency"] for r in table] == [1, 3] and {r["mode"] for r in table} == {"closed"}
    for r, samples in zip(table, drawn(sharegpt_file, 6, 2)):
        check_row(r, samples)
        ok = [s for s in samples if FAIL not in s.prompt and CUT not in s.prompt]
        # the fake server streams max_tokens chunks and reports usage: both are what was asked
        assert r["output_tokens"] == sum(s.completion_len for s in ok)
    # the failures are the marked prompts, with the reason kept (500 or a dropped stream)
    assert sum(r["failed"] for r in table) == 2
    assert any("HTTP 500" in r["top_error"] or "[DONE]" in r["top_error"] for r in table)
    sent = [b for b in fake_openai.bodies if b["max_tokens"] != api_serving.WARMUP_TOKENS]
    assert len(sent) == 12
    assert all(
        b["stream"] and b["ignore_eos"] and b["stream_options"]["include_usage"] for b in sent
    )
    assert csv_path.with_suffix(".png").exists() or not _has_matplotlib()


def test_open_loop_poisson_arrivals(tmp_path, sharegpt_file, fake_openai):
    cfg = bench_config(tmp_path, sharegpt_file, fake_openai.url, "num_prompts=8",
                       "request_rate=40", "warmup_rounds=0")  # fmt: skip
    (row,) = api_serving.run(cfg)
    assert row["mode"] == "open" and row["request_rate"] == 40 and row["concurrency"] == ""
    check_row(row, drawn(sharegpt_file, 8, 1)[0])


def test_no_server_stops_with_one_line(tmp_path, sharegpt_file):
    cfg = bench_config(tmp_path, sharegpt_file, "http://127.0.0.1:9", "num_prompts=2")
    with pytest.raises(SystemExit, match="no warm-up request .* succeeded"):
        api_serving.run(cfg)


def test_a_server_that_stalls_times_out(fake_openai):
    fake_openai.token_delay = 1.0
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    r = asyncio.run(stream_chat(fake_openai.url + api_serving.CHAT_PATH, body, timeout=0.3))
    assert not r.ok and "within 0.3 s" in r.error


def test_against_nybble_api_server(tmp_path, sharegpt_file):
    """The real server (plugins/frontends/api.py) with the tiny model: nothing fails, and the
    server's usage says every request generated its reference answer's length."""
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from core.llm import LLM
    from plugins.frontends.api import build_app

    llm = LLM(overrides=[*TINY, "frontend=api"])
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(llm, llm.cfg.frontend), host="127.0.0.1", port=0, log_level="warning"
        )  # fmt: skip
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        data = tmp_path / "clean.json"  # no failure markers: a real server fails none
        text = sharegpt_file.read_text().replace(FAIL, "").replace(CUT, "")
        data.write_text(text)
        cfg = bench_config(tmp_path, data, f"http://127.0.0.1:{port}", "num_prompts=4",
                           "concurrency=[2]")  # fmt: skip
        (row,) = api_serving.run(cfg)
    finally:
        server.should_exit = True
        thread.join(10)
    samples = drawn(data, 4, 1)[0]
    assert row["failed"] == 0, row["top_error"]
    assert row["completed"] == 4
    assert row["output_tokens"] == sum(s.completion_len for s in samples)  # ignore_eos kept
    assert row["prompt_tokens"] > sum(s.prompt_len for s in samples)  # + the chat template
    check_row(row, samples)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
