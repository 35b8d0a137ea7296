"""``nybble frontend=triton`` as a user runs it: the CLI in a subprocess serving the tiny model on
127.0.0.1 through a real tritonserver, queried with tritonclient over HTTP and gRPC, streamed and
not. One server for the module (tritonserver's start-up dominates)."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from plugins.frontends import triton_environment

PROBLEMS = triton_environment.problems()
if PROBLEMS:
    pytest.skip("PyTriton cannot run here: " + "; ".join(PROBLEMS), allow_module_level=True)

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ENGINE = ["model=internlm-tiny", "engine=cpu-small", "sampling.max_new_tokens=8"]
MODEL, STREAM = "internlm-tiny", "internlm-tiny_stream"
TIMEOUT_S = 30.0  # every client call: an error must come back, never a hang
START_TIMEOUT_S = 120.0


@dataclass
class Server:
    http: str  # host:port
    grpc: str
    metrics: str


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    http, grpc, metrics = free_ports(3)
    log = tmp_path_factory.mktemp("triton") / "server.log"
    args = [
        *ENGINE,
        "frontend=triton",
        "frontend.host=127.0.0.1",
        f"frontend.port={http}",
        f"frontend.grpc_port={grpc}",
        f"frontend.metrics_port={metrics}",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli", *args], cwd=REPO, stdout=out, stderr=out
        )
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}", network_timeout=5)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{_log_tail(log)}"
            assert time.monotonic() < deadline, (
                f"not ready in {START_TIMEOUT_S}s:\n{_log_tail(log)}"
            )
            try:
                if client.is_model_ready(MODEL) and client.is_model_ready(STREAM):
                    break
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        client.close()
        yield Server(f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", f"127.0.0.1:{metrics}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"the server did not stop on SIGINT:\n{_log_tail(log)}")


@pytest.fixture(scope="module")
def reference():
    """The same model in this process, through the Python API."""
    from core.llm import LLM

    return LLM(overrides=ENGINE[1:])


def http_inputs(**values) -> list:
    return _inputs(httpclient.InferInput, values)


def grpc_inputs(**values) -> list:
    return _inputs(grpcclient.InferInput, values)


TRITON_TYPES = {np.int32: "INT32", np.int64: "INT64", np.float32: "FP32", np.bool_: "BOOL"}


def _inputs(make, values: dict) -> list:
    inputs = []
    for name, value in values.items():
        if isinstance(value, np.ndarray):
            array, dtype = value, TRITON_TYPES[value.dtype.type]
        else:  # text: one string or a list of strings
            items = [value] if isinstance(value, str) else value
            array, dtype = np.array([s.encode() for s in items], dtype=object), "BYTES"
        tensor = make(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def one(value, dtype) -> np.ndarray:
    return np.array([value], dtype=dtype)


def http_infer(server: Server, **values):
    client = httpclient.InferenceServerClient(server.http, network_timeout=TIMEOUT_S)
    try:
        return client.infer(MODEL, http_inputs(**values))
    finally:
        client.close()


def stream(server: Server, **values) -> list:
    """Every response of one streamed request (gRPC, decoupled); raises the error if any."""
    client = grpcclient.InferenceServerClient(server.grpc)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(STREAM, grpc_inputs(**values), enable_empty_final_response=True)
        results = []
        while True:
            result, error = responses.get(timeout=TIMEOUT_S)
            if error is not None:
                raise error
            if result.get_response().parameters["triton_final_response"].bool_param:
                return results
            results.append(result)
    finally:
        client.stop_stream()
        client.close()


def text(result) -> str:
    return result.as_numpy("text_output")[0].decode()


def test_http_infer_answers_like_the_python_api(server, reference):
    result = http_infer(server, text_input="Hello", max_tokens=one(6, np.int32))
    expected = reference.generate(
        ["Hello"], reference.sampling_params(max_tokens=6, temperature=0.0), use_tqdm=False
    )[0].outputs[0]
    greedy = http_infer(
        server, text_input="Hello", max_tokens=one(6, np.int32), temperature=one(0, np.float32)
    )
    assert text(greedy) == expected.text
    assert greedy.as_numpy("output_ids").tolist() == expected.token_ids
    assert result.as_numpy("finish_reason")[0] == b"length"
    assert result.as_numpy("completion_tokens")[0] == 6
    assert result.as_numpy("prompt_tokens")[0] == len(reference.tokenizer.encode("Hello"))


def test_grpc_infer_with_token_ids(server, reference):
    ids = reference.tokenizer.encode("Once upon a time")
    client = grpcclient.InferenceServerClient(server.grpc)
    try:
        result = client.infer(
            MODEL,
            grpc_inputs(input_ids=np.array(ids, np.int64), top_k=one(1, np.int32)),
            client_timeout=TIMEOUT_S,
        )
    finally:
        client.close()
    params = reference.sampling_params(top_k=1)
    expected = reference.generate([ids], params, use_tqdm=False)[0].outputs[0]
    assert result.as_numpy("output_ids").tolist() == expected.token_ids  # 8: conf's default
    assert text(result) == expected.text


def test_grpc_stream_sends_the_text_piece_by_piece(server):
    values = dict(text_input="Hello", max_tokens=one(8, np.int32), temperature=one(0, np.float32))
    pieces = stream(server, **values)
    whole = http_infer(server, **values)
    assert len(pieces) == 8  # one token each
    assert "".join(text(p) for p in pieces) == text(whole)
    ids = [i for p in pieces for i in p.as_numpy("output_ids").tolist()]
    assert ids == whole.as_numpy("output_ids").tolist()
    assert [p.as_numpy("finish_reason")[0] for p in pieces] == [b""] * 7 + [b"length"]


def test_streams_run_at_once(server):
    seeds = range(4)
    results: dict[int, list] = {}

    def run(seed: int) -> None:
        results[seed] = stream(server, text_input="Hi", seed=one(seed, np.int64))

    threads = [threading.Thread(target=run, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert sorted(results) == list(seeds)
    assert all(r[-1].as_numpy("finish_reason")[0] == b"length" for r in results.values())


def test_sampling_inputs_reach_the_engine(server):
    same = [
        text(http_infer(server, text_input="Hi", seed=one(7, np.int64), top_p=one(0.9, np.float32)))
        for _ in range(2)
    ]
    assert same[0] == same[1]
    first = http_infer(server, text_input="Hi", max_tokens=one(8, np.int32), top_k=one(1, np.int32))
    stop = text(first)[2:4]  # a stop string the greedy answer meets after two characters
    stopped = http_infer(
        server, text_input="Hi", max_tokens=one(8, np.int32), top_k=one(1, np.int32), stop=[stop]
    )
    assert stopped.as_numpy("finish_reason")[0] == b"stop"
    assert text(first).startswith(text(stopped)) and stop not in text(stopped)


def test_http_generate_endpoints(server):
    body = json.dumps({"text_input": "Hello", "max_tokens": 3, "temperature": 0}).encode()
    url = f"http://{server.http}/v2/models"
    with urllib.request.urlopen(f"{url}/{MODEL}/generate", body, timeout=TIMEOUT_S) as r:
        answer = json.load(r)
    assert answer["completion_tokens"] == 3 and answer["finish_reason"] == "length"
    with urllib.request.urlopen(f"{url}/{STREAM}/generate_stream", body, timeout=TIMEOUT_S) as r:
        events = [json.loads(line[5:]) for line in r.read().decode().splitlines() if line]
    assert "".join(e["text_output"] for e in events) == answer["text_output"]


BAD = [
    ({"max_tokens": one(4, np.int32)}, "exactly one of text_input"),
    ({"text_input": "Hi", "temperature": one(-1, np.float32)}, "SamplingParams.temperature"),
    ({"text_input": "Hi", "top_p": one(0, np.float32)}, "SamplingParams.top_p"),
    ({"input_ids": np.ones(3000, np.int64)}, "more than session_len"),
    ({"input_ids": np.array([10**9], np.int64)}, "prompt token ids must be in"),
    ({"text_input": "Hi", "max_tokens": one(5000, np.int32)}, "exceeds session_len"),
]


@pytest.mark.parametrize("values, message", BAD, ids=lambda v: str(v)[:30])
def test_bad_input_gets_an_error_over_http(server, values, message):
    with pytest.raises(InferenceServerException, match=message):
        http_infer(server, **values)


@pytest.mark.parametrize("values, message", BAD, ids=lambda v: str(v)[:30])
def test_bad_input_gets_an_error_in_the_stream(server, values, message):
    with pytest.raises(InferenceServerException, match=message):
        stream(server, **values)


def test_triton_refuses_wrong_types_and_unknown_inputs(server):
    with pytest.raises(InferenceServerException, match="max_tokens"):
        http_infer(server, text_input="Hi", max_tokens=one(4.0, np.float32))
    with pytest.raises(InferenceServerException, match="nonsense"):
        http_infer(server, text_input="Hi", nonsense=one(1, np.int32))


def test_the_server_still_serves_after_errors_and_reports_metrics(server):
    assert http_infer(server, text_input="Hi").as_numpy("finish_reason")[0] == b"length"
    try:
        with urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=TIMEOUT_S) as r:
            metrics = r.read().decode()
    except urllib.error.URLError as e:
        pytest.fail(f"no metrics on {server.metrics}: {e}")
    success = [
        line for line in metrics.splitlines()
        if line.startswith("nv_inference_request_success") and f'model="{MODEL}"' in line
    ]  # fmt: skip
    assert success and float(success[0].rsplit(" ", 1)[1]) > 0
