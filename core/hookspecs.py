"""The extension points of nybble: one ``register_*`` hook per kind of plugin.

Every hook receives a ``register`` callback and calls it once per thing it provides; the plugin
manager (core/plugins.py) collects the calls into typed registries (core/registry.py). Built-in
plugins (core's own, plugins/awq, plugins/models/internlm, plugins/frontends) use exactly these
hooks; third-party packages implement them in a module exposed under the entry-point group
``nybble``. A hook a plugin implements that is not listed here fails at start-up
(``check_pending``), so a misspelled name cannot be silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "nybble"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_weight_formats(register: Callable[[Any], None]) -> None:
    """Register weight formats (how a linear layer stores and applies its weight).

    Implemented by: core (``dense``, fp16/bf16/fp32) and plugins/awq (``awq``).
    Call ``register(fmt)`` with an instance of ``core.weight_format.WeightFormat``; its ``name``
    is the registry key used by ``quant=<name>`` and by checkpoint auto-detection.
    """


@hookspec
def register_models(register: Callable[[str, type], None]) -> None:
    """Register model architectures.

    Implemented by: model plugins (plugins/models/internlm).
    Call ``register(architecture, model_class)`` where ``architecture`` is the Hugging Face
    ``config.json`` ``architectures[0]`` string (e.g. ``"InternLMForCausalLM"``) and
    ``model_class(config, linear_method, kernels, dtype)`` builds a ``torch.nn.Module``
    following ``core.model_contract.CausalLM``.
    """


@hookspec
def register_chat_templates(register: Callable[[str, Any], None]) -> None:
    """Register chat templates.

    Implemented by: model plugins.
    Call ``register(name, template)`` with a ``core.chat_template.ChatTemplate``; ``name`` is what
    ``model.chat_template`` selects.
    """


@hookspec
def register_kernels(register: Callable[[str, str, Callable[..., Any]], None]) -> None:
    """Register kernel implementations of named ops.

    Implemented by: core (torch references of the model ops, Triton kernels) and plugins/awq.
    Call ``register(op, backend, fn)`` with ``backend`` in {"torch", "triton"}. Every op needs a
    "torch" implementation: it is the CPU path and the oracle the others are tested against.
    Ops are resolved once, when the model is built (``core.kernels.KernelTable``).
    """


@hookspec
def register_frontends(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register frontends.

    Implemented by: plugins/frontends (chat, api, gradio, triton) and third parties.
    Call ``register(name, launcher)``; ``launcher(llm, cfg)`` runs the frontend until it exits,
    ``cfg`` being the whole composed config (its own options are under ``cfg.frontend``). Import
    heavy dependencies inside the launcher, not at module level.
    """
