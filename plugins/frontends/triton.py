"""The Triton Inference Server frontend: ``nybble frontend=triton`` (conf/frontend/triton.yaml).

Binds the engine to a real tritonserver through PyTriton (nvidia-pytriton, which bundles the
server). Two models, both named after the served model (``model.name``):

- ``<model>``: plain inference, one response with the whole text; HTTP and gRPC ``infer``, and
  HTTP ``POST /v2/models/<model>/generate``.
- ``<model>_stream``: decoupled, a response per piece of new text; gRPC streaming
  (``tritonclient.grpc`` ``start_stream`` / ``async_stream_infer``) and HTTP
  ``POST /v2/models/<model>_stream/generate_stream`` (server-sent events).

Inputs and outputs are listed in plugins/frontends/triton_request.py. Every request runs on the
one engine, which batches them continuously; the plain model serves one request at a time (Triton
would otherwise batch several into one call, and one bad request would fail them all), the
streamed model any number at once. Ports come from the config: ``frontend.port`` (HTTP),
``frontend.grpc_port``, ``frontend.metrics_port`` (Prometheus), all on ``frontend.host``.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from core.config import ConfigError
from plugins.frontends import triton_environment

STREAM_SUFFIX = "_stream"
EXIT_TIMEOUT_S = 5  # how long tritonserver waits for requests in flight when it stops


def model_names(model_name: str) -> tuple[str, str]:
    """The Triton names of the plain and the streamed model for ``model_name``."""
    name = re.sub(r"[^a-zA-Z0-9._-]", "-", model_name) or "nybble"
    return name, name + STREAM_SUFFIX


def triton_config(frontend: Any) -> Any:
    """PyTriton's TritonConfig for a FrontendConfig (host, port, grpc_port, metrics_port)."""
    from pytriton.triton import TritonConfig

    return TritonConfig(
        http_address=frontend.host,
        http_port=frontend.port,
        grpc_address=frontend.host,
        grpc_port=frontend.grpc_port,
        metrics_address=frontend.host,
        metrics_port=frontend.metrics_port,
        exit_timeout_secs=EXIT_TIMEOUT_S,
    )


def check_ports(frontend: Any) -> None:
    """Raise ConfigError naming the key of a port that is already taken on ``frontend.host``
    (tritonserver would only log it and PyTriton wait for a server that never comes up)."""
    for key in ("port", "grpc_port", "metrics_port"):
        port = getattr(frontend, key)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((frontend.host, port))
            except OSError as e:
                raise ConfigError(
                    f"frontend.{key}={port}: expected a free port on {frontend.host} ({e.strerror})"
                ) from None


@contextmanager
def serving(llm: Any, frontend: Any) -> Iterator[Any]:
    """Start tritonserver with both models bound to ``llm`` and yield the connected PyTriton
    ``Triton``; leaving stops the server and aborts what is still running."""
    triton_environment.check()
    check_ports(frontend)
    triton_environment.use_own_libpython()  # before PyTriton starts tritonserver (see there)
    from pytriton.model_config import ModelConfig
    from pytriton.triton import Triton

    from plugins.frontends.triton_model import GenerateModels
    from plugins.frontends.triton_request import input_tensors, output_tensors

    models = GenerateModels(llm)
    plain, streamed = model_names(llm.model_name)
    try:
        with Triton(config=triton_config(frontend)) as triton:
            for name, infer, decoupled in (
                (plain, models.infer, False),
                (streamed, models.infer_stream, True),
            ):
                triton.bind(
                    model_name=name,
                    infer_func=infer,
                    inputs=input_tensors(),
                    outputs=output_tensors(),
                    config=ModelConfig(batching=False, decoupled=decoupled),
                    strict=True,
                )
            triton.connect()
            yield triton
    finally:
        models.close()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def launch(llm: Any, cfg: Any) -> None:
    """Serve ``llm`` through Triton until interrupted (Ctrl+C, SIGTERM) or the server dies."""
    frontend = cfg.frontend
    if threading.current_thread() is threading.main_thread():
        # PyTriton stops cleanly on KeyboardInterrupt only; SIGTERM (docker stop, systemd)
        # would leave its workspace (a copy of tritonserver) behind in ~/.cache/pytriton
        signal.signal(signal.SIGTERM, _interrupt)
    plain, streamed = model_names(llm.model_name)
    with serving(llm, frontend) as triton:
        print(
            f"Triton serving {plain!r} (infer) and {streamed!r} (decoupled, streamed): "
            f"HTTP {frontend.host}:{frontend.port}, gRPC {frontend.host}:{frontend.grpc_port}, "
            f"metrics http://{frontend.host}:{frontend.metrics_port}/metrics",
            flush=True,
        )
        triton.serve()
