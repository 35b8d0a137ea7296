"""The plugin module named by the entry point: one hook implementation per extension point."""

from core.hookspecs import hookimpl


@hookimpl
def register_frontends(register):
    from nybble_hello.frontend import launch

    register("hello", launch)


@hookimpl
def register_weight_formats(register):
    from nybble_hello.int8 import Int8Format

    register(Int8Format())
