"""OpenAI-style error answers: ``{"error": {"message", "type", "param", "code"}}``, for every
failure the server can name (bad fields, unknown model, too-long prompt, limits, auth)."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from core.engine import RequestError

logger = logging.getLogger("nybble.api")

# SamplingParams' messages start with "SamplingParams.<field>=<value>: expected ..."
_FIELD_IN_MESSAGE = re.compile(r"^SamplingParams\.(\w+)=")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error answer: HTTP ``status`` with an OpenAI-style body (and optional headers)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "internal_server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def bad_request(error: ValueError, param: str | None = None) -> APIError:
    """A 400 for a value the engine or SamplingParams refused; names the field when it can."""
    message = str(error)
    if param is None and (m := _FIELD_IN_MESSAGE.match(message)):
        param = m.group(1)
    return APIError(400, message, param=param)


def _is_branch(part: object) -> bool:
    """A union branch in a pydantic error location ("str", "list[int]"), not a field name."""
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "none") or "[" in part or "-" in part
    )  # field names have neither brackets nor hyphens; "constrained-str" and the like do


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One line per offending field. For a union (``prompt``: a text, texts or token ids),
    the branch the value got deepest into explains the error; when none got past the type,
    the line lists the accepted types."""
    found: dict[str, tuple[int, str, str]] = {}  # field -> (depth, where, message)
    branches: dict[str, list[str]] = {}
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return f"the body is not valid JSON: {detail}", None
        raw = [x for x in err.get("loc", ()) if x != "body"]
        cut = next((i for i, x in enumerate(raw) if _is_branch(x)), len(raw))
        field = ".".join(str(x) for x in raw[:cut]) or "body"
        inner = [str(x) for x in raw[cut + 1 :] if not _is_branch(x)]
        if cut < len(raw) and raw[cut] not in branches.setdefault(field, []):
            branches[field].append(str(raw[cut]))
        depth = len(inner)
        if field not in found or depth > found[field][0]:
            found[field] = (depth, ".".join([field, *inner]), err.get("msg", "invalid"))
    parts, param = [], None
    for field, (depth, where, msg) in list(found.items())[:5]:
        if depth == 0 and len(branches.get(field, ())) > 1:
            where, msg = field, f"expected one of {' | '.join(branches[field])}"
        parts.append(f"{where}: {msg}")
        param = param or (where if where != "body" else None)
    return "; ".join(parts) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error the OpenAI way; malformed input gets a 4xx, never a 500."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return APIError(400, message, param=param).response()

    @app.exception_handler(RequestError)
    async def _refused(request: Request, exc: RequestError) -> JSONResponse:
        return bad_request(exc).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body(500, f"internal error: {type(exc).__name__}: {exc}"), status_code=500
        )
