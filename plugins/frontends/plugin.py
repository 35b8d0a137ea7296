"""The built-in frontends: chat (terminal), api (OpenAI-compatible), gradio, triton.

Each launcher imports its module only when it runs, so choosing ``frontend=chat`` never imports
FastAPI, gradio or PyTriton, and a missing optional dependency surfaces when that frontend is
launched, naming it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from core.hookspecs import hookimpl
from core.plugins import PluginError

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
        try:
            frontend = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # a dependency of the frontend is missing: say which
                raise
            raise PluginError(
                f"frontend {name!r} is not available: its module {module} is not in this "
                f"installation; frontends that are: {', '.join(sorted(available()))}"
            ) from e
        return frontend.launch(llm, cfg)

    launch.__name__ = f"launch_{name}"
    launch.__qualname__ = launch.__name__
    launch.__doc__ = f"Run the {name} frontend ({module}.launch)."
    return launch


def available() -> list[str]:
    """The built-in frontends whose module is installed."""
    return [n for n, m in FRONTEND_MODULES.items() if importlib.util.find_spec(m) is not None]


@hookimpl
def register_frontends(register):
    for name, module in FRONTEND_MODULES.items():
        register(name, lazy_launcher(name, module))
