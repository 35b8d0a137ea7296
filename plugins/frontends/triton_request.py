"""The tensors of nybble's Triton models, and requests read from them.

Both models (plain and streamed) take the same inputs; every one is optional, but a request
needs a prompt: ``text_input`` or ``input_ids``. Shapes have no batch dimension (the models do
not batch in Triton: the engine batches continuously behind them).

==========================  ======  =====  ==============================================
input                       type    shape  meaning
==========================  ======  =====  ==============================================
text_input                  BYTES   [1]    the prompt (UTF-8)
input_ids                   INT64   [-1]   the prompt as token ids (instead of text)
apply_chat_template         BOOL    [1]    wrap text_input as a user message in the
                                           model's chat template (default false)
max_tokens, min_tokens      INT32   [1]    as SamplingParams (defaults: conf sampling/)
temperature, top_p, min_p   FP32    [1]
top_k                       INT32   [1]
repetition_penalty,         FP32    [1]
presence_penalty,
frequency_penalty
seed                        INT64   [1]
stop                        BYTES   [-1]   stop strings
stop_token_ids              INT64   [-1]
ignore_eos,                 BOOL    [1]
skip_special_tokens,
include_stop_str_in_output
==========================  ======  =====  ==============================================

Outputs: ``text_output`` (BYTES [1]), ``output_ids`` (INT64 [-1]), ``finish_reason`` (BYTES
[1]: "stop", "length", "abort"; empty in a streamed response that is not the last),
``prompt_tokens`` and ``completion_tokens`` (INT32 [1]). The plain model answers with the whole
text; the streamed one sends each new piece of text and its token ids as it is generated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pytriton.model_config import Tensor

from core.outputs import RequestOutput
from core.sampling_params import SamplingParams

# input name -> (dtype, shape); the sampling inputs are SamplingParams fields of the same name
SAMPLING_INPUTS: dict[str, tuple[type, tuple[int, ...]]] = {
    "max_tokens": (np.int32, (1,)),
    "min_tokens": (np.int32, (1,)),
    "temperature": (np.float32, (1,)),
    "top_p": (np.float32, (1,)),
    "top_k": (np.int32, (1,)),
    "min_p": (np.float32, (1,)),
    "repetition_penalty": (np.float32, (1,)),
    "presence_penalty": (np.float32, (1,)),
    "frequency_penalty": (np.float32, (1,)),
    "seed": (np.int64, (1,)),
    "stop": (bytes, (-1,)),
    "stop_token_ids": (np.int64, (-1,)),
    "ignore_eos": (np.bool_, (1,)),
    "skip_special_tokens": (np.bool_, (1,)),
    "include_stop_str_in_output": (np.bool_, (1,)),
}
PROMPT_INPUTS: dict[str, tuple[type, tuple[int, ...]]] = {
    "text_input": (bytes, (1,)),
    "input_ids": (np.int64, (-1,)),
    "apply_chat_template": (np.bool_, (1,)),
}
OUTPUTS: dict[str, tuple[type, tuple[int, ...]]] = {
    "text_output": (bytes, (1,)),
    "output_ids": (np.int64, (-1,)),
    "finish_reason": (bytes, (1,)),
    "prompt_tokens": (np.int32, (1,)),
    "completion_tokens": (np.int32, (1,)),
}


class InvalidRequest(ValueError):
    """A request the model refuses; Triton returns the message to the client as an error."""

    # PyTriton sends the client format_exception(e, e.__traceback__). Reporting no traceback
    # makes that one line naming the problem instead of our stack; Python keeps the real
    # traceback where it always does (sys.exc_info(), which the server's log prints).
    @property
    def __traceback__(self) -> None:  # type: ignore[override]
        return None

    @__traceback__.setter
    def __traceback__(self, _tb: Any) -> None:
        pass


def input_tensors() -> list[Tensor]:
    """The models' inputs, all optional (a request without a prompt is refused by name)."""
    specs = {**PROMPT_INPUTS, **SAMPLING_INPUTS}
    return [Tensor(name=n, dtype=d, shape=s, optional=True) for n, (d, s) in specs.items()]


def output_tensors() -> list[Tensor]:
    return [Tensor(name=n, dtype=d, shape=s) for n, (d, s) in OUTPUTS.items()]


def _text(name: str, value: Any) -> str:
    raw = value if isinstance(value, bytes) else str(value).encode()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(f"{name} is not valid UTF-8: {e}") from None


def _one(name: str, array: np.ndarray) -> Any:
    if array.size != 1:
        raise InvalidRequest(f"{name} takes one value; got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def _sampling_value(name: str, array: np.ndarray) -> Any:
    dtype, shape = SAMPLING_INPUTS[name]
    if shape == (-1,):
        if dtype is bytes:
            return [_text(name, v) for v in array.reshape(-1)]
        return [int(v) for v in array.reshape(-1)]
    value = _one(name, array)
    convert: Callable[[Any], Any] = {np.int32: int, np.int64: int, np.float32: float}.get(
        dtype, bool
    )
    return convert(value)


@dataclass
class GenerationRequest:
    """What one Triton request asks the engine for."""

    prompt: str | list[int]
    params: SamplingParams


def parse_request(
    inputs: Mapping[str, np.ndarray],
    make_params: Callable[..., SamplingParams],
    render_chat: Callable[[str], str],
) -> GenerationRequest:
    """Read a request's input tensors; raise InvalidRequest naming the input that is wrong.

    ``make_params(**overrides)`` fills the fields the request leaves out from the config's
    defaults (``LLM.sampling_params``); ``render_chat(text)`` is the chat-template prompt for
    one user message.
    """
    has_text, has_ids = "text_input" in inputs, "input_ids" in inputs
    if has_text == has_ids:
        raise InvalidRequest(
            "send the prompt as exactly one of text_input (BYTES [1]) or input_ids (INT64 [-1]); "
            f"got {'both' if has_text else 'neither'}"
        )
    chat = "apply_chat_template" in inputs and bool(
        _one("apply_chat_template", inputs["apply_chat_template"])
    )
    prompt: str | list[int]
    if has_text:
        prompt = _text("text_input", _one("text_input", inputs["text_input"]))
        if chat:
            prompt = render_chat(prompt)
    else:
        if chat:
            raise InvalidRequest("apply_chat_template needs text_input, not input_ids")
        prompt = [int(t) for t in inputs["input_ids"].reshape(-1)]
    overrides = {n: _sampling_value(n, a) for n, a in inputs.items() if n in SAMPLING_INPUTS}
    try:
        params = make_params(**overrides)
    except ValueError as e:  # SamplingParams names the field, the value and the range
        raise InvalidRequest(str(e)) from None
    return GenerationRequest(prompt, params)


def response(out: RequestOutput, streamed: bool) -> dict[str, np.ndarray]:
    """The output tensors for an engine output: its new text and ids when ``streamed``, else
    the whole text and ids."""
    seq = out.outputs[0]
    text, ids = (seq.delta_text, seq.delta_token_ids) if streamed else (seq.text, seq.token_ids)
    return {
        "text_output": np.array([text.encode("utf-8")], dtype=object),
        "output_ids": np.array(ids, dtype=np.int64),
        "finish_reason": np.array([(seq.finish_reason or "").encode()], dtype=object),
        "prompt_tokens": np.array([out.usage.prompt_tokens], dtype=np.int32),
        "completion_tokens": np.array([out.usage.completion_tokens], dtype=np.int32),
    }
