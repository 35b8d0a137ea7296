"""The Triton models' inputs read into engine requests, and the stub environment fix, without a
server (tests/frontends/test_triton.py runs the real one)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed")

from core.config import ConfigError, FrontendConfig  # noqa: E402
from core.outputs import CompletionOutput, RequestOutput, Usage  # noqa: E402
from core.sampling_params import SamplingParams  # noqa: E402
from plugins.frontends import triton_environment  # noqa: E402
from plugins.frontends.triton import check_ports, model_names  # noqa: E402
from plugins.frontends.triton_request import (  # noqa: E402
    InvalidRequest,
    input_tensors,
    parse_request,
    response,
)


def defaults(**overrides) -> SamplingParams:
    return SamplingParams(**{"max_tokens": 16, **overrides})


def parse(**inputs):
    return parse_request(inputs, defaults, lambda text: f"<user>{text}<bot>")


def test_text_and_every_sampling_input():
    req = parse(
        text_input=np.array([b"hi \xc3\xa9"], dtype=object),
        max_tokens=np.array([5], np.int32),
        min_tokens=np.array([2], np.int32),
        temperature=np.array([0.5], np.float32),
        top_p=np.array([0.9], np.float32),
        top_k=np.array([40], np.int32),
        min_p=np.array([0.05], np.float32),
        repetition_penalty=np.array([1.1], np.float32),
        presence_penalty=np.array([0.5], np.float32),
        frequency_penalty=np.array([-0.5], np.float32),
        seed=np.array([7], np.int64),
        stop=np.array([b"\n", b"END"], dtype=object),
        stop_token_ids=np.array([2, 3], np.int64),
        ignore_eos=np.array([True]),
        skip_special_tokens=np.array([False]),
        include_stop_str_in_output=np.array([True]),
    )
    p = req.params
    assert req.prompt == "hi é"
    assert (p.max_tokens, p.min_tokens, p.top_k, p.seed) == (5, 2, 40, 7)
    assert (p.temperature, p.top_p, p.min_p) == pytest.approx((0.5, 0.9, 0.05))
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == pytest.approx(
        (1.1, 0.5, -0.5)
    )
    assert p.stop == ["\n", "END"] and p.stop_token_ids == [2, 3]
    assert (p.ignore_eos, p.skip_special_tokens, p.include_stop_str_in_output) == (
        True,
        False,
        True,
    )


def test_unset_inputs_keep_the_defaults():
    req = parse(input_ids=np.array([1, 2, 3], np.int64))
    assert req.prompt == [1, 2, 3] and req.params == defaults()


def test_chat_template_wraps_the_text():
    req = parse(text_input=np.array([b"hi"], dtype=object), apply_chat_template=np.array([True]))
    assert req.prompt == "<user>hi<bot>"


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({}, "exactly one of text_input"),
        (
            {"text_input": np.array([b"a"], dtype=object), "input_ids": np.array([1])},
            "got both",
        ),
        ({"text_input": np.array([b"\xff"], dtype=object)}, "not valid UTF-8"),
        ({"input_ids": np.array([1]), "apply_chat_template": np.array([True])}, "needs text_input"),
        (
            {"input_ids": np.array([1]), "temperature": np.array([-1.0], np.float32)},
            "SamplingParams.temperature=-1.0",
        ),
        ({"input_ids": np.array([1]), "max_tokens": np.array([1, 2], np.int32)}, "one value"),
    ],
)
def test_bad_inputs_name_the_problem(inputs, message):
    with pytest.raises(InvalidRequest, match=message):
        parse(**inputs)


def test_inputs_are_optional_and_typed():
    tensors = {t.name: t for t in input_tensors()}
    assert all(t.optional for t in tensors.values())
    assert tensors["text_input"].dtype is bytes and tensors["input_ids"].shape == (-1,)
    assert set(tensors) - {"text_input", "input_ids", "apply_chat_template"} <= {
        f for f in SamplingParams.__dataclass_fields__
    }


def test_response_whole_or_delta():
    seq = CompletionOutput(0, "hello", [5, 6], "lo", [6], "stop")
    out = RequestOutput("r", [1, 2, 3], [seq], True, Usage(3, 2))
    whole, delta = response(out, streamed=False), response(out, streamed=True)
    assert whole["text_output"][0].decode() == "hello" and whole["output_ids"].tolist() == [5, 6]
    assert delta["text_output"][0].decode() == "lo" and delta["output_ids"].tolist() == [6]
    assert whole["finish_reason"][0] == b"stop"
    assert (whole["prompt_tokens"][0], whole["completion_tokens"][0]) == (3, 2)


def test_the_error_a_client_reads_is_one_line():
    import traceback

    try:
        parse()
    except InvalidRequest as e:
        text = "".join(traceback.format_exception(None, e, e.__traceback__))
    assert text.startswith("plugins.frontends.triton_request.InvalidRequest: send the prompt")
    assert "Traceback" not in text


def test_model_names():
    assert model_names("internlm-chat-20b") == ("internlm-chat-20b", "internlm-chat-20b_stream")
    assert model_names("org/model v2") == ("org-model-v2", "org-model-v2_stream")


def test_stub_gets_this_pythons_libpython(monkeypatch):
    libdir = triton_environment.libpython_dir()
    if libdir is None:
        pytest.skip("this Python has no shared libpython")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/x")
    triton_environment.use_own_libpython()
    triton_environment.use_own_libpython()  # idempotent
    assert os.environ["LD_LIBRARY_PATH"] == f"{libdir}{os.pathsep}/opt/x"


def test_numpy_2_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(triton_environment.np, "__version__", "2.4.6")
    with pytest.raises(triton_environment.TritonUnavailable, match=r"numpy<2"):
        triton_environment.check()


def test_a_taken_port_is_named_before_the_server_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        frontend = FrontendConfig(name="triton", port=0, grpc_port=port, metrics_port=0)
        with pytest.raises(ConfigError, match=f"frontend.grpc_port={port}: expected a free port"):
            check_ports(frontend)
