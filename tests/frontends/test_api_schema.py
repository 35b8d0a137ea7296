"""Schemathesis against the server's own OpenAPI schema: whatever it generates, valid or not,
the server never answers 5xx. Generation lengths are capped so each example stays cheap."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

# fields that make an example generate many tokens or sequences, and their caps here
CAPS = {"max_tokens": 4, "max_completion_tokens": 4, "request_output_len": 4, "n": 2,
        "min_tokens": 2}  # fmt: skip
MAX_PROMPTS = 3


def cheap(body):
    """The same request with at most ``CAPS`` tokens, sequences and prompts."""
    if not isinstance(body, dict):
        return body
    for name, cap in CAPS.items():
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            body[name] = cap
    if body.get("ignore_eos") is True and "max_tokens" not in body:
        body["max_tokens"] = CAPS["max_tokens"]
    for name in ("prompt", "input", "messages"):
        if isinstance(body.get(name), list):
            body[name] = body[name][:MAX_PROMPTS]
    return body


def fuzz(operation, mode: GenerationMode, answers: Counter) -> None:
    """Run ``max_examples`` generated requests of one operation; count their statuses."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=10, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def no_5xx(case):
        case.body = cheap(case.body)
        response = case.call_and_validate(checks=[not_a_server_error], timeout=60)
        answers[operation.path, mode.value, response.status_code] += 1

    no_5xx()


def test_no_server_errors(api_server):
    schema = schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions"}
    answers: Counter = Counter()  # (path, mode, status)
    for operation, mode in itertools.product(operations, GenerationMode):
        if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # nothing in a bare GET to get wrong
        fuzz(operation, mode, answers)
    # valid requests did generate (the test is not a wall of 400s)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/chat/interactive"):
        assert answers[path, "positive", 200] > 0, answers
    api_server.wait_idle()
