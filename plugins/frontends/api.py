"""The OpenAI-compatible API server: FastAPI on uvicorn over the asyncio engine.

``nybble frontend=api`` runs ``launch``; ``build_app`` gives the ASGI app for tests or another
server. Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (both
streamed or not), POST /v1/chat/interactive (sessions), POST /v1/encode, GET /health,
GET /metrics (Prometheus), and the OpenAPI docs at /docs. Settings come from
conf/frontend/api.yaml (``frontend.*``): host, port, api_keys, cors_origins,
max_running_requests, max_queued_requests, max_body_bytes.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from plugins.frontends import api_completions, api_sessions
from plugins.frontends.api_context import ERRORS, ServerContext, context
from plugins.frontends.api_errors import install_error_handlers
from plugins.frontends.api_limits import APIKeys, BodyLimit
from plugins.frontends.api_metrics import CONTENT_TYPE, CountRequests
from plugins.frontends.api_schemas import EncodeRequest, EncodeResponse, ModelList

logger = logging.getLogger("nybble.api")

models_router = APIRouter()
open_router = APIRouter()  # no API key: probes and scrapers


@models_router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(ctx: ServerContext = Depends(context)) -> dict[str, Any]:
    card = {
        "id": ctx.model_name,
        "object": "model",
        "created": ctx.created,
        "owned_by": "nybble",
        "max_model_len": ctx.session_len,
    }
    return {"object": "list", "data": [card]}


@models_router.post("/v1/encode", response_model=EncodeResponse, responses=ERRORS)
async def encode(body: EncodeRequest, ctx: ServerContext = Depends(context)) -> dict[str, Any]:
    """Token ids of a text (or texts); ``do_preprocess`` wraps it in the chat template."""

    def one(text: str) -> list[int]:
        if body.do_preprocess:
            text = ctx.template.render([{"role": "user", "content": text}])
        return ctx.tokenizer.encode(text, add_bos=body.add_bos and not body.do_preprocess)

    if isinstance(body.input, str):
        ids = await run_in_threadpool(one, body.input)
        return {"input_ids": ids, "length": len(ids)}
    batch = [await run_in_threadpool(one, t) for t in body.input]
    return {"input_ids": batch, "length": [len(i) for i in batch]}


@open_router.get("/health")
async def health(ctx: ServerContext = Depends(context)) -> JSONResponse:
    """200 while the engine steps without error, else 503 with the error."""
    ctx.check_healthy()
    return JSONResponse({"status": "ok"})


@open_router.get("/metrics", response_class=Response)
async def metrics(ctx: ServerContext = Depends(context)) -> Response:
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)


def build_app(llm: Any, frontend: Any) -> FastAPI:
    """The ASGI app serving ``llm`` with the options of ``frontend`` (a FrontendConfig)."""
    ctx = ServerContext(llm, frontend)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await ctx.engine.shutdown()

    app = FastAPI(
        title="nybble",
        summary=f"OpenAI-compatible API serving {ctx.model_name}",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    secured = [Depends(APIKeys(frontend.api_keys))]
    for router in (models_router, api_completions.router, api_sessions.router):
        app.include_router(router, dependencies=secured)
    app.include_router(open_router)
    # outermost first: CORS headers on every answer, then the count, then the body cap
    app.add_middleware(BodyLimit, max_bytes=frontend.max_body_bytes)
    endpoints = {*_document(app)["paths"], "/docs", "/openapi.json"}
    app.add_middleware(CountRequests, metrics=ctx.metrics, endpoints=endpoints)
    if frontend.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(frontend.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials="*" not in frontend.cors_origins,
        )
    return app


def _document(app: FastAPI) -> dict[str, Any]:
    """Build (and cache) the OpenAPI schema, without FastAPI's 422 answers: this server
    answers invalid input with 400 and an OpenAI error body, as the schema says."""
    schema = app.openapi()
    for operations in schema["paths"].values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    return schema


def launch(llm: Any, cfg: Any) -> None:
    """Serve ``llm`` on ``cfg.frontend.host:port`` until interrupted."""
    import uvicorn

    frontend = cfg.frontend
    app = build_app(llm, frontend)
    logger.info(
        "serving %s on http://%s:%d (docs at /docs)", llm.model_name, frontend.host, frontend.port
    )
    print(f"nybble api · {llm.model_name} · http://{frontend.host}:{frontend.port}/docs")
    uvicorn.run(app, host=frontend.host, port=frontend.port, log_level="info")
