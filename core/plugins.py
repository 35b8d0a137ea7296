"""The plugin manager: loads built-in and third-party plugins and fills the registries."""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from core import hookspecs
from core.registry import Registry

# Built-in plugins, loaded exactly like third-party ones (they only use the public hooks).
BUILTIN_PLUGINS: tuple[str, ...] = (
    "core.builtin",
    "plugins.awq.plugin",
    "plugins.models.internlm.plugin",
    "plugins.frontends.plugin",
)

ENTRY_POINT_GROUP = "nybble"
# Which external (entry-point) plugins load: unset or "all" = every one; "none" or "" = none;
# otherwise a comma-separated list of entry-point names.
PLUGINS_ENV = "NYBBLE_PLUGINS"


class PluginError(RuntimeError):
    """A plugin failed to import or declared a hook nybble does not define."""


@dataclass
class Registries:
    """Everything the plugins registered, by kind."""

    weight_formats: Registry = field(default_factory=lambda: Registry("weight format"))
    models: Registry = field(default_factory=lambda: Registry("model architecture"))
    chat_templates: Registry = field(default_factory=lambda: Registry("chat template"))
    kernels: Registry = field(default_factory=lambda: Registry("kernel"))
    frontends: Registry = field(default_factory=lambda: Registry("frontend"))


def _allowed_external(name: str) -> bool:
    value = os.environ.get(PLUGINS_ENV)
    if value is None or value.strip() == "all":
        return True
    allowed = {v.strip() for v in value.split(",") if v.strip()}
    return name in allowed


def make_plugin_manager(load_external: bool = True) -> pluggy.PluginManager:
    """A PluginManager with the built-ins registered, plus allowed entry-point plugins."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    if load_external:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if not _allowed_external(ep.name) or pm.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
            except Exception as e:  # a broken plugin fails loudly, naming itself
                raise PluginError(
                    f"plugin {ep.name!r} ({ep.value}) failed to import: {e!r}; "
                    f"fix it, uninstall it, or leave it out with {PLUGINS_ENV}"
                ) from e
            pm.register(module, name=ep.name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(f"{e}; the hooks nybble defines are in core/hookspecs.py") from e
    return pm


def collect(pm: pluggy.PluginManager) -> Registries:
    """Call every register_* hook once and gather the results into registries."""
    regs = Registries()
    for impl in pm.hook.register_weight_formats.get_hookimpls():
        owner = impl.plugin_name
        impl.function(register=lambda fmt, o=owner: regs.weight_formats.add(fmt.name, fmt, o))
    for impl in pm.hook.register_models.get_hookimpls():
        owner = impl.plugin_name
        impl.function(register=lambda n, cls, o=owner: regs.models.add(n, cls, o))
    for impl in pm.hook.register_chat_templates.get_hookimpls():
        owner = impl.plugin_name
        impl.function(register=lambda n, t, o=owner: regs.chat_templates.add(n, t, o))
    for impl in pm.hook.register_kernels.get_hookimpls():
        owner = impl.plugin_name
        impl.function(
            register=lambda op, backend, fn, o=owner: regs.kernels.add(f"{op}:{backend}", fn, o)
        )
    for impl in pm.hook.register_frontends.get_hookimpls():
        owner = impl.plugin_name
        impl.function(register=lambda n, launcher, o=owner: regs.frontends.add(n, launcher, o))
    return regs


@functools.cache
def get_registries() -> Registries:
    """The process-wide registries (plugins are loaded once)."""
    return collect(make_plugin_manager())
