"""Where the web UI's answers come from: the in-process engine, or a running API server.

Both backends take the same turn (the tab's session id, the conversation so far, the new user
message and the page's settings) and yield the answer as text deltas. A turn that cannot be
answered raises ``BackendError`` with a message for the page.

- ``LocalBackend`` keeps a server-side session per tab (LMDeploy's interactive mode): a follow-up
  turn sends only the new message, the earlier turns come from the prefix cache.
- ``RemoteBackend`` speaks the standard OpenAI protocol to ``nybble frontend=api``
  (``POST /v1/chat/completions`` with ``stream: true``), sending the whole conversation each turn;
  the server's prefix cache finds the earlier turns, so any OpenAI-compatible server works.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from core.async_engine import AsyncEngine
from core.engine import RequestError

CONNECT_TIMEOUT_S = 5.0  # an unreachable server is reported after this long, not hung on


class BackendError(Exception):
    """A turn that cannot be answered; the message is shown in the page as it is."""


@dataclass(frozen=True)
class Settings:
    """What the page's controls set for one turn. ``top_k`` 0 = off; an empty
    ``system_prompt`` = the model's default."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    system_prompt: str = ""


class ChatBackend(Protocol):
    """The contract of the two backends below."""

    async def describe(self) -> str:
        """The model's name as the page shows it."""
        ...

    def stream(
        self, session_id: str, history: list[dict[str, str]], user_text: str, settings: Settings
    ) -> AsyncIterator[str]:
        """The answer to ``user_text`` as text deltas; ``history`` holds the earlier turns as
        ``{"role", "content"}`` dicts. Closing the iterator early cancels the answer."""
        ...

    async def end(self, session_id: str) -> None:
        """Forget the session's conversation (Reset, or the tab went away)."""
        ...


def messages_for(
    history: list[dict[str, str]], user_text: str, system_prompt: str
) -> list[dict[str, str]]:
    """The OpenAI-style message list of a turn."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    return [*system, *history, {"role": "user", "content": user_text}]


@dataclass
class _Session:
    system_prompt: str  # the one the engine session was started with
    closed: bool = False  # the last answer ended with a stop token (eoa), not Stop or a limit


class LocalBackend:
    """The in-process engine through ``AsyncEngine``: answers of several tabs share its batch."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.engine = AsyncEngine(llm.engine)
        self.template = llm.template
        self._sessions: dict[str, _Session] = {}

    async def describe(self) -> str:
        return self.llm.model_name

    async def stream(
        self, session_id: str, history: list[dict[str, str]], user_text: str, settings: Settings
    ) -> AsyncIterator[str]:
        try:
            params = self.llm.sampling_params(
                max_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=settings.top_k,
                repetition_penalty=settings.repetition_penalty,
            )
        except ValueError as e:
            raise BackendError(str(e)) from None
        prompt = await self._prompt(session_id, history, user_text, settings.system_prompt)
        previous = self._sessions.get(session_id)
        session = self._sessions[session_id] = _Session(settings.system_prompt)
        try:
            async for out in self.engine.generate(prompt, params, session_id=session_id):
                completion = out.outputs[0]
                if completion.delta_text:
                    yield completion.delta_text
                if out.finished:
                    session.closed = completion.finish_reason == "stop"
        except RequestError as e:  # refused before it started: the session is as it was
            if previous is None:
                self._sessions.pop(session_id, None)
            else:
                self._sessions[session_id] = previous
            raise BackendError(str(e)) from None

    async def _prompt(
        self, session_id: str, history: list[dict[str, str]], user_text: str, system_prompt: str
    ) -> str:
        """Only the new turn while the engine still holds the session; else the whole
        conversation (a new tab, or a changed system prompt, which starts the session over)."""
        session = self._sessions.get(session_id)
        if (
            session is not None
            and session.system_prompt == system_prompt
            and session_id in self.llm.engine.sessions
        ):
            # an answer cut short by Stop or max new tokens never got its end-of-answer marker
            close = "" if session.closed else self.template.eoa
            return close + self.template.render_next_turn(user_text)
        await self.engine.end_session(session_id)
        return self.template.render(messages_for(history, user_text, system_prompt))

    async def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        await self.engine.end_session(session_id)


class RemoteBackend:
    """A running OpenAI-compatible server at ``server_url`` (e.g. ``nybble frontend=api``)."""

    def __init__(
        self,
        server_url: str,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)  # answers may take minutes
        self.client = httpx.AsyncClient(
            base_url=self.server_url, headers=headers, timeout=timeout, transport=transport
        )
        self._model: str | None = None

    async def describe(self) -> str:
        try:
            return f"{await self._model_name()} (server {self.server_url})"
        except BackendError as e:
            return f"unknown model: {e}"

    async def _model_name(self) -> str:
        """The first model the server lists at ``GET /v1/models``, asked once."""
        if self._model is None:
            try:
                resp = await self.client.get("/v1/models", timeout=CONNECT_TIMEOUT_S)
            except httpx.HTTPError as e:
                raise self._unreachable(e) from None
            if resp.status_code != 200:
                raise BackendError(_http_error(resp, "GET /v1/models"))
            models = resp.json().get("data") or []
            if not models:
                raise BackendError(f"the API server at {self.server_url} serves no model")
            self._model = models[0]["id"]
        return self._model

    def _unreachable(self, e: httpx.HTTPError) -> BackendError:
        reason = str(e) or type(e).__name__
        return BackendError(f"cannot reach the API server at {self.server_url}: {reason}")

    async def stream(
        self, session_id: str, history: list[dict[str, str]], user_text: str, settings: Settings
    ) -> AsyncIterator[str]:
        body = {
            "model": await self._model_name(),
            "messages": messages_for(history, user_text, settings.system_prompt),
            "stream": True,
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "top_k": settings.top_k,  # not in OpenAI's API; nybble's and LMDeploy's servers take it
            "repetition_penalty": settings.repetition_penalty,
            "user": session_id,
        }
        try:
            async with self.client.stream("POST", "/v1/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise BackendError(_http_error(resp, "POST /v1/chat/completions"))
                async for line in resp.aiter_lines():
                    data = line.removeprefix("data:").strip() if line.startswith("data:") else ""
                    if not data:
                        continue
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise BackendError(f"the API server failed: {_error_text(chunk)}")
                    for choice in chunk.get("choices", []):
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            yield delta
        except httpx.HTTPError as e:
            raise self._unreachable(e) from None

    async def end(self, session_id: str) -> None:
        """Nothing to end on the server: each turn sends the whole conversation."""

    async def aclose(self) -> None:
        await self.client.aclose()


def _error_text(payload: Any) -> str:
    """The message of an OpenAI-style ``{"error": {"message"}}`` or FastAPI ``{"detail"}``."""
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("detail"))
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if error is not None:
            return str(error)
    return str(payload)


def _http_error(resp: httpx.Response, what: str) -> str:
    try:
        message = _error_text(resp.json())
    except ValueError:
        message = resp.text.strip()[:500] or resp.reason_phrase
    return f"the API server refused {what} ({resp.status_code}): {message}"


def make_backend(llm: Any, server_url: str | None, api_key: str | None = None) -> ChatBackend:
    """``RemoteBackend`` when a server URL is given (``api_key`` its Bearer key), else
    ``LocalBackend`` on ``llm``."""
    if server_url:
        return RemoteBackend(server_url, api_key)
    if llm is None:
        raise ValueError("the gradio frontend needs an LLM, or frontend.server_url to use a server")
    return LocalBackend(llm)
