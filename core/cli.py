"""The command-line entry points: ``nybble``, ``nybble-convert`` and ``nybble-bench``.

Each is a Hydra app over conf/ (``config.yaml``, ``convert.yaml``, ``bench.yaml``), so
``--help``, ``--cfg job`` and ``-m`` (multirun sweeps) work as in any Hydra app. Before Hydra
runs, the overrides are composed and validated once more here, so a bad value (an unknown group
option, a wrong type, an out-of-range number) ends the command with exit status 2 and one line,
``error: <key>=<value>: expected <what>``, instead of Hydra's multi-line report.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig

from core.compose import (
    CONFIG_MODULE,
    BenchConfig,
    ConvertConfig,
    check,
    compose_config,
    explain,
    register_plugin_schemas,
)
from core.config import ConfigError, NybbleConfig
from core.plugins import PluginError
from core.registry import RegistryError

EXIT_USAGE = 2  # a bad setting or name: the user can fix the command line
EXIT_DATA = 1  # a checkpoint that does not fit the config (missing tensor, wrong shape)
USER_ERRORS = (ConfigError, RegistryError, PluginError)


def fail(error: Exception, status: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: <message>`` to stderr and exit with ``status`` (no traceback)."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(status)


def serve(cfg: NybbleConfig) -> None:
    """``nybble``: build the LLM and run the chosen frontend until it exits."""
    from core.llm import LLM
    from core.plugins import get_registries

    launcher = get_registries().frontends.get(cfg.frontend.name)
    # a gradio page in front of a running API server needs no model of its own
    remote = cfg.frontend.name == "gradio" and cfg.frontend.server_url
    launcher(None if remote else LLM(cfg), cfg)


def convert(cfg: ConvertConfig) -> None:
    """``nybble-convert``: write the workspace ``cfg.output`` from ``cfg.model.path``."""
    from core.convert import convert as write_workspace

    write_workspace(cfg)


def bench(cfg: BenchConfig) -> None:
    """``nybble-bench``: run bench/<task>.py (its ``run(cfg)``)."""
    importlib.import_module(f"bench.{cfg.task}").run(cfg)


def _precheck_overrides(overrides: Sequence[str], multirun: bool) -> list[list[str]]:
    """The override lists to compose before Hydra runs: the given ones, or for a multirun one
    list per value of each sweep (the other sweeps at their first value)."""
    overrides = [o for o in overrides if not o.lstrip("~+").startswith("hydra.")]
    if not multirun:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    values: list[list[str]] = []
    for text, o in zip(overrides, parsed, strict=True):
        if o.is_sweep_override():
            try:
                choices = list(o.sweep_string_iterator())
            except HydraException:  # glob(...) and friends: Hydra expands and checks those
                choices = []
            values.append([f"{o.get_key_element()}={v}" for v in choices])
        else:
            values.append([text])
    first = [v[0] for v in values if v]
    runs = [first]
    for i, v in enumerate(values):
        for alternative in v[1:]:
            runs.append([alternative if j == i else w[0] for j, w in enumerate(values) if w])
    return runs


def _run(config_name: str, job: Callable[[Any], None]) -> None:
    """Check the command line, then hand it to the Hydra app that runs ``job(cfg)``."""
    args = get_args_parser().parse_args()
    try:
        register_plugin_schemas()  # plugin frontends / weight formats become group options
        if not (args.help or args.hydra_help or args.info or args.shell_completion):
            for overrides in _precheck_overrides(args.overrides, args.multirun):
                compose_config(overrides, config_name)
    except HydraException as e:
        fail(explain(e))
    except USER_ERRORS as e:
        fail(e)

    def task(cfg: DictConfig) -> None:
        from core.checkpoint import CheckpointError
        from core.layers.linear import WeightShapeError

        try:
            job(check(cfg, config_name))
        except USER_ERRORS as e:
            fail(e)
        except (CheckpointError, WeightShapeError) as e:  # their messages name file and fix
            fail(e, EXIT_DATA)

    app = hydra.main(
        version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=config_name
    )(task)
    try:
        app()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `nybble --help | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def main() -> None:
    """``nybble [group=option ...] [key=value ...]``: serve a model through a frontend.

    ``nybble model=internlm-tiny frontend=chat`` chats in the terminal with a tiny random model;
    ``nybble model=internlm-chat-20b model.path=<checkpoint or workspace> frontend=api`` serves
    the real one. ``nybble --help`` lists the groups and every setting.
    """
    _run("config", serve)


def convert_main() -> None:
    """``nybble-convert model.path=<checkpoint> output=<workspace>``: write a workspace."""
    _run("convert", convert)


def bench_main() -> None:
    """``nybble-bench task=<bench module> ...``: run a benchmark; ``-m`` sweeps settings."""
    _run("bench", bench)


if __name__ == "__main__":
    main()
