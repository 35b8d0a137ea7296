"""The built-in frontends: chat (terminal), api (OpenAI-compatible), gradio, triton.

Each launcher imports its module only when it runs, so choosing ``frontend=chat`` never imports
FastAPI, gradio or PyTriton, and a missing optional dependency surfaces when that frontend is
launched, naming it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from core.hookspecs import hookimpl

# frontend name -> module under plugins/frontends whose launch(llm, cfg) runs it
FRONTEND_MODULES = {
    "chat": "plugins.frontends.chat",
    "api": "plugins.frontends.api",
    "gradio": "plugins.frontends.gradio",
    "triton": "plugins.frontends.triton",
}


def lazy_launcher(name: str, module: str) -> Callable[[Any, Any], Any]:
    """A launcher that imports ``module`` when called and runs its ``launch(llm, cfg)``."""

    def launch(llm: Any, cfg: Any) -> Any:
        return importlib.import_module(module).launch(llm, cfg)

    launch.__name__ = f"launch_{name}"
    launch.__qualname__ = launch.__name__
    launch.__doc__ = f"Run the {name} frontend ({module}.launch)."
    return launch


@hookimpl
def register_frontends(register):
    for name, module in FRONTEND_MODULES.items():
        register(name, lazy_launcher(name, module))
