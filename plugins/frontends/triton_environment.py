"""What PyTriton's tritonserver needs from this Python before it starts, checked and fixed here.

PyTriton runs the models of ``nybble frontend=triton`` through Triton's Python backend: every
model instance is a ``triton_python_backend_stub`` process, a child of tritonserver, itself a
child of this process, which embeds a libpython of this Python's version and imports the proxy
code from this environment. Two things go wrong with nvidia-pytriton 0.7.0:

- The stub links ``libpython3.X.so.1.0`` by name, and the loader finds the system's (Debian's)
  copy before a pyenv/venv interpreter's own. The two builds disagree inside, and the model
  fails to load with "'_thread.RLock' object has no attribute '_recursion_count'". Pointing
  ``LD_LIBRARY_PATH`` at this interpreter's library folder (``sysconfig``'s LIBDIR) makes the
  stub load the right one; the server and the stubs inherit it from this process.
- The stub's compiled code reads NumPy 1.x array descriptors; under NumPy 2 it misreads text
  (BYTES) tensors and dies on the first request ("Stub process ... is not healthy").
  nvidia-pytriton requires ``numpy<2`` for this reason; an environment that upgraded NumPy
  afterwards is refused at start-up rather than on the first request.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np

from core.plugins import PluginError

PYTRITON = "nvidia-pytriton"


class TritonUnavailable(PluginError):
    """This Python cannot run PyTriton's server; the message says why and what fixes it (a
    PluginError, so ``nybble`` prints it as one line)."""


def libpython_dir() -> Path | None:
    """This interpreter's folder holding ``libpython3.X.so.1.0``, or None for a static build."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")  # libpython3.11.so.1.0
    if not libdir or not soname or not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    return Path(libdir) if (Path(libdir) / soname).exists() else None


def problems() -> list[str]:
    """Why PyTriton cannot serve from this Python (empty when it can)."""
    found = []
    for module, package in (("pytriton", PYTRITON), ("tritonclient", "tritonclient[all]")):
        if importlib.util.find_spec(module) is None:
            found.append(f"{module} is not installed: pip install {package}")
    if int(np.__version__.split(".")[0]) >= 2:
        found.append(
            f"NumPy {np.__version__} is installed, but nvidia-pytriton's Python backend stub "
            "is built for NumPy 1.x and crashes on text tensors under NumPy 2: "
            "pip install 'numpy<2' 'pandas<3.1' (pandas 3.1 needs NumPy 2)"
        )
    if sys.platform == "linux" and libpython_dir() is None:
        found.append(
            f"{sys.executable} is not built with a shared libpython (--enable-shared), which "
            "Triton's Python backend stub needs: use a Python built with it (pyenv: "
            "PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install 3.11)"
        )
    return found


def check() -> None:
    """Raise TritonUnavailable listing every problem, if any."""
    found = problems()
    if found:
        raise TritonUnavailable("the triton frontend cannot start: " + "; ".join(found))


def use_own_libpython() -> None:
    """Put this interpreter's libpython first on ``LD_LIBRARY_PATH`` for the child processes
    (tritonserver and the Python backend stubs) that PyTriton starts after this call."""
    libdir = libpython_dir()
    if libdir is None:
        return
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if paths[:1] != [str(libdir)]:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([str(libdir), *paths])
