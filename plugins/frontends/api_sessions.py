"""POST /v1/chat/interactive: the seed's (LMDeploy's) session API.

The conversation of a session lives in the engine (``Engine.sessions``: its tokens so far,
whose KV blocks the prefix cache keeps), so with ``interactive_mode=true`` a client sends
only the new user message. ``stop=true`` cancels the session's running request;
``interactive_mode=false`` answers (continuing the conversation, if any) and then ends the
session; with ``request_output_len=0`` it only ends it. Streamed answers are JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from plugins.frontends.api_context import ERRORS, Generation, ServerContext, context
from plugins.frontends.api_errors import APIError, error_body
from plugins.frontends.api_responses import ClosingStream
from plugins.frontends.api_schemas import InteractiveRequest, InteractiveResponse

SAMPLING_FIELDS = (
    "top_p", "top_k", "temperature", "repetition_penalty", "min_p", "ignore_eos",
    "skip_special_tokens", "seed",
)  # fmt: skip
SESSION_IDS = (1, 2**31 - 1)  # where ids for session_id=-1 are drawn

router = APIRouter()


class Sessions:
    """The server's side of the sessions: which one runs a request now, and whether its last
    answer ended with the end-of-answer token (else the next turn closes it first)."""

    def __init__(self) -> None:
        self.running: dict[str, Generation] = {}
        self.open_answer: set[str] = set()  # sessions whose last answer was cut short
        self._tasks: set[asyncio.Task] = set()

    def new_id(self, engine_sessions: dict) -> int:
        while True:
            sid = random.randint(*SESSION_IDS)
            if key(sid) not in engine_sessions and key(sid) not in self.running:
                return sid

    def end_later(self, ctx: ServerContext, session: str) -> None:
        """End the session from a finally block, where nothing can be awaited."""
        self.open_answer.discard(session)
        task = asyncio.get_running_loop().create_task(ctx.engine.end_session(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def key(session_id: int) -> str:
    return f"interactive-{session_id}"


def sessions_of(ctx: ServerContext) -> Sessions:
    if not hasattr(ctx, "sessions"):
        ctx.sessions = Sessions()  # type: ignore[attr-defined]
    return ctx.sessions  # type: ignore[attr-defined]


def _reply(text: str, tokens: int, inputs: int, history: int, reason: Any, sid: int) -> dict:
    return {
        "text": text,
        "tokens": tokens,
        "input_tokens": inputs,
        "history_tokens": history,
        "finish_reason": reason,
        "session_id": sid,
    }


async def _turn_prompt(
    ctx: ServerContext, body: InteractiveRequest, session: str, continuing: bool
) -> str:
    messages = (
        [{"role": "user", "content": body.prompt}]
        if isinstance(body.prompt, str)
        else [m.model_dump(exclude_none=True) for m in body.prompt]
    )
    if not continuing:
        try:
            return ctx.template.render(messages, add_generation_prompt=True)
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from None
    if len(messages) != 1 or messages[0]["role"] != "user":
        raise APIError(400, "a running session continues with one user message", param="prompt")
    content = messages[0]["content"]
    text = content if isinstance(content, str) else "".join(p["text"] for p in content)
    close = ctx.template.eoa if session in sessions_of(ctx).open_answer else ""
    return close + ctx.template.render_next_turn(text)


@router.post(
    "/v1/chat/interactive",
    response_model=InteractiveResponse,
    responses={**ERRORS, 409: ERRORS[400], 200: {"content": {"application/x-ndjson": {}}}},
    summary="Session chat (LMDeploy's interactive API)",
)
async def chat_interactive(
    body: InteractiveRequest, request: Request, ctx: ServerContext = Depends(context)
) -> Any:
    table = sessions_of(ctx)
    sid = body.session_id if body.session_id != -1 else table.new_id(ctx.llm.engine.sessions)
    session = key(sid)
    history = len(ctx.llm.engine.sessions.get(session, ()))
    if body.stop:
        running = table.running.get(session)
        if running is not None:
            running.cancel(ctx.engine)
        return _reply("", 0, 0, history, "abort" if running else None, sid)
    if session in table.running:
        raise APIError(
            409, f"session {sid} is answering a request; wait for it or send stop=true",
            param="session_id", code="session_busy",
        )  # fmt: skip
    if body.request_output_len == 0:
        if body.interactive_mode:
            raise APIError(
                400, "request_output_len=0 only ends a session (with interactive_mode=false)",
                param="request_output_len",
            )  # fmt: skip
        table.open_answer.discard(session)
        await ctx.engine.end_session(session)
        return _reply("", 0, 0, history, None, sid)

    continuing = history > 0
    ids = await ctx.tokenize(await _turn_prompt(ctx, body, session, continuing))
    fields = {k: getattr(body, k) for k in SAMPLING_FIELDS if getattr(body, k) is not None}
    if body.request_output_len is not None:
        fields["max_tokens"] = body.request_output_len
    params = ctx.sampling_params(fields, history + len(ids))
    # a one-off request (no session to keep, none to continue) leaves no session behind
    engine_session = session if body.interactive_mode or continuing else None
    if session in table.running:  # taken while this request was tokenizing
        raise APIError(409, f"session {sid} is answering a request", code="session_busy")
    ctx.check_healthy()
    gen = Generation([], None)
    table.running[session] = gen
    turn = Turn(ctx, table, session, gen, body.interactive_mode)
    try:
        gen.slot = await ctx.admission.acquire()
        gen.streams.append(await ctx.submit(ids, params, engine_session, param="prompt"))
    except BaseException:
        turn.end(None, submitted=False)
        raise
    if gen.cancelled:  # stop=true came while this request waited for admission
        gen.cancel(ctx.engine)

    if body.stream:
        lines = _lines(gen, turn, len(ids), history, sid)
        return ClosingStream(lines, turn.end, media_type="application/x-ndjson")
    try:
        (final,) = await gen.final_outputs(request)
    except BaseException:
        turn.end()
        raise
    await turn.finish(final)
    o = final.outputs[0]
    return JSONResponse(_reply(o.text, len(o.token_ids), len(ids), history, o.finish_reason, sid))


class Turn:
    """One request of a session. Once, however it ends (``finish`` or ``end``): free its slot,
    record whether the answer was closed by the end-of-answer token, and end the session
    unless it is interactive."""

    def __init__(
        self, ctx: ServerContext, table: Sessions, session: str, gen: Generation, keep: bool
    ) -> None:
        self.ctx, self.table, self.session, self.gen, self.keep = ctx, table, session, gen, keep
        self.ended = False

    def _settle(self, final: Any, submitted: bool) -> bool:
        if self.ended:
            return False
        self.ended = True
        self.gen.close()
        if self.table.running.get(self.session) is self.gen:
            del self.table.running[self.session]
        if submitted:
            o = final.outputs[0] if final is not None else None
            if o is not None and o.finish_reason == "stop" and isinstance(o.stop_reason, int):
                self.table.open_answer.discard(self.session)
            else:  # cut short (a limit, stop=true, a client gone): the next turn closes it
                self.table.open_answer.add(self.session)
        return True

    async def finish(self, final: Any) -> None:
        """The turn's answer is complete: the session is ended before the client hears so."""
        if self._settle(final, submitted=True) and not self.keep:
            self.table.open_answer.discard(self.session)
            await self.ctx.engine.end_session(self.session)

    def end(self, final: Any = None, submitted: bool = True) -> None:
        """Any other way out (an error, a client gone), where nothing can be awaited."""
        if self._settle(final, submitted) and not self.keep:
            self.table.end_later(self.ctx, self.session)


async def _lines(
    gen: Generation, turn: Turn, inputs: int, history: int, sid: int
) -> AsyncIterator[str]:
    try:
        async for _, out in gen.outputs():
            o = out.outputs[0]
            if out.finished:
                await turn.finish(out)
            if o.delta_text or o.finish_reason:
                reply = _reply(
                    o.delta_text, len(o.token_ids), inputs, history, o.finish_reason, sid
                )
                yield json.dumps(reply, ensure_ascii=False) + "\n"
    except Exception as e:  # the 200 is sent: the client learns of it in the stream
        yield json.dumps(error_body(500, f"generation failed: {e}")) + "\n"
    finally:
        turn.end()
