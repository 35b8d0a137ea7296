"""POST /v1/chat/completions and POST /v1/completions, streamed (SSE) and not."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from core.outputs import RequestOutput
from plugins.frontends.api_context import ERRORS, Generation, ServerContext, context
from plugins.frontends.api_errors import APIError, error_body
from plugins.frontends.api_responses import (
    ChoiceTracker,
    ClosingStream,
    LogprobFormatter,
    sse,
    usage,
)
from plugins.frontends.api_schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    SamplingFields,
)

logger = logging.getLogger("nybble.api")

# SamplingFields that are SamplingParams fields of the same name
SAMPLING_FIELDS = (
    "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
    "presence_penalty", "frequency_penalty", "stop", "stop_token_ids",
    "include_stop_str_in_output", "seed", "n", "ignore_eos", "min_tokens", "skip_special_tokens",
)  # fmt: skip

STREAM_DOC = {"content": {"text/event-stream": {}}, "description": "JSON, or SSE when stream"}

router = APIRouter()


def sampling_fields(body: SamplingFields) -> dict[str, Any]:
    """The sampling fields the client set (the rest take the server's defaults)."""
    values = {k: getattr(body, k) for k in SAMPLING_FIELDS if k in body.model_fields_set}
    return {k: v for k, v in values.items() if v is not None}


def check_stream_options(body: SamplingFields) -> None:
    if body.stream_options is not None and not body.stream:
        raise APIError(
            400, "stream_options is only allowed with stream=true", param="stream_options"
        )


async def _events(
    gen: Generation,
    head: dict[str, Any],
    choices: Callable[[int, RequestOutput, ChoiceTracker], list[dict[str, Any]]],
    first: list[dict[str, Any]],
    include_usage: bool,
) -> AsyncIterator[str]:
    """The SSE body: ``first`` choices, then the moved choices of each output, the usage chunk
    if asked, ``[DONE]``; an engine failure mid-stream becomes an error event."""
    extra = {"usage": None} if include_usage else {}
    tracker = ChoiceTracker()
    finals: dict[int, RequestOutput] = {}
    try:
        if first:
            yield sse({**head, "choices": first, **extra})
        async for i, out in gen.outputs():
            moved = choices(i, out, tracker)
            if moved:
                yield sse({**head, "choices": moved, **extra})
            if out.finished:
                finals[i] = out
        if include_usage:
            yield sse({**head, "choices": [], "usage": usage(list(finals.values()))})
        yield sse("[DONE]")
    except Exception as e:  # the 200 is sent: the client learns of it in the stream
        logger.exception("stream %s failed", head["id"])
        yield sse(error_body(500, f"generation failed: {e}"))
        yield sse("[DONE]")
    finally:
        gen.close()


# ---- chat ---------------------------------------------------------------------------------
@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={**ERRORS, 200: STREAM_DOC},
    summary="Chat completion (OpenAI)",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, ctx: ServerContext = Depends(context)
) -> Any:
    ctx.check_model(body.model)
    check_stream_options(body)
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    try:
        prompt = ctx.template.render(messages, add_generation_prompt=True)
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from None
    ids = await ctx.tokenize(prompt)
    fields = sampling_fields(body)
    if body.max_completion_tokens is not None:
        fields["max_tokens"] = body.max_completion_tokens
    if body.logprobs:
        fields["logprobs"] = body.top_logprobs or 0
    elif body.top_logprobs is not None:
        raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    params = ctx.sampling_params(fields, len(ids))
    gen = await ctx.start([ids], params, param="messages")
    rid, created = ctx.new_id("chatcmpl"), int(time.time())
    head = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": ctx.model_name,
    }
    logprobs = LogprobFormatter(ctx.tokenizer) if body.logprobs else None

    if body.stream:

        def choices(i: int, out: RequestOutput, tracker: ChoiceTracker) -> list[dict[str, Any]]:
            moved = []
            for o in out.outputs:
                if tracker.moved(o.index, o):
                    lp = logprobs.chat(o.delta_logprobs) if logprobs else None
                    delta = {"content": o.delta_text} if o.delta_text else {}
                    moved.append(
                        {"index": o.index, "delta": delta, "logprobs": lp,
                         "finish_reason": o.finish_reason}
                    )  # fmt: skip
            return moved

        first = [
            {"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
             "finish_reason": None}
            for k in range(params.n)
        ]  # fmt: skip
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return ClosingStream(_events(gen, head, choices, first, include_usage), gen.close)

    (final,) = await gen.final_outputs(request)
    return JSONResponse(
        {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": o.index,
                    "message": {"role": "assistant", "content": o.text},
                    "logprobs": logprobs.chat(o.logprobs) if logprobs else None,
                    "finish_reason": o.finish_reason,
                }
                for o in final.outputs
            ],
            "usage": usage([final]),
        }
    )


# ---- text completions ---------------------------------------------------------------------
async def _prompt_ids(ctx: ServerContext, prompt: Any) -> list[list[int]]:
    if isinstance(prompt, str):
        return [await ctx.tokenize(prompt)]
    if isinstance(prompt[0], int):
        return [list(prompt)]
    if isinstance(prompt[0], str):
        return [await ctx.tokenize(p) for p in prompt]
    return [list(p) for p in prompt]


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses={**ERRORS, 200: STREAM_DOC},
    summary="Text completion (OpenAI)",
)
async def completions(
    body: CompletionRequest, request: Request, ctx: ServerContext = Depends(context)
) -> Any:
    ctx.check_model(body.model)
    check_stream_options(body)
    prompts = await _prompt_ids(ctx, body.prompt)
    fields = sampling_fields(body)
    if body.logprobs is not None:
        fields["logprobs"] = body.logprobs
    params = ctx.sampling_params(fields, max(len(p) for p in prompts))
    gen = await ctx.start(prompts, params, param="prompt")
    rid, created = ctx.new_id("cmpl"), int(time.time())
    head = {"id": rid, "object": "text_completion", "created": created, "model": ctx.model_name}
    logprobs = LogprobFormatter(ctx.tokenizer) if body.logprobs is not None else None
    n = params.n

    if body.stream:

        def choices(i: int, out: RequestOutput, tracker: ChoiceTracker) -> list[dict[str, Any]]:
            moved = []
            for o in out.outputs:
                index = i * n + o.index
                if tracker.moved(index, o):
                    offset = tracker.text_len.get(index, 0)
                    tracker.text_len[index] = offset + len(o.delta_text)
                    lp = logprobs.completion(o.delta_logprobs, offset) if logprobs else None
                    moved.append(
                        {"index": index, "text": o.delta_text, "logprobs": lp,
                         "finish_reason": o.finish_reason}
                    )  # fmt: skip
            return moved

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return ClosingStream(_events(gen, head, choices, [], include_usage), gen.close)

    finals = await gen.final_outputs(request)
    return JSONResponse(
        {
            **head,
            "choices": [
                {
                    "index": i * n + o.index,
                    "text": o.text,
                    "logprobs": logprobs.completion(o.logprobs) if logprobs else None,
                    "finish_reason": o.finish_reason,
                }
                for i, final in enumerate(finals)
                for o in final.outputs
            ],
            "usage": usage(finals),
        }
    )
