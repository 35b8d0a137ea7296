"""Composes conf/ into a validated config: Hydra does the composing, core.config the checking.

The three roots (``config``, ``bench``, ``convert``) share the groups model, quant, kernels,
engine, sampling and frontend; ``bench`` and ``convert`` add their own typed options
(``BenchConfig``, ``ConvertConfig``). Every schema lives in Hydra's ConfigStore, so Hydra
type-checks while composing, and ``validate`` then checks values and plugin names. Whatever goes
wrong comes out as a ``ConfigError`` naming the key, the value and what was expected.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import pkgutil
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from core.config import ConfigError, FrontendConfig, NybbleConfig, QuantConfig, _fail, validate

CONFIG_MODULE = "conf"  # conf/ ships inside the wheel as package data
GROUPS = ("model", "quant", "kernels", "engine", "sampling", "frontend")


@dataclass
class DatasetConfig:
    """A ShareGPT-style JSON file of conversations (request_throughput, api_serving)."""

    path: str | None = None


@dataclass
class BenchConfig(NybbleConfig):
    """``nybble-bench``: which benchmark (a module of bench/) and its load."""

    task: str = "token_throughput"  # bench/<task>.py, whose run(cfg) measures and writes results
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 16, 32])
    # (prompt tokens, completion tokens) of each token_throughput run
    token_pairs: list[list[int]] = field(
        default_factory=lambda: [[256, 512], [512, 512], [512, 1024], [1024, 1024]]
    )
    # batch sizes at which token_throughput also times transformers' fp16 model (same shapes,
    # same run) on the first token pair; [] = no baseline
    baseline_batches: list[int] = field(default_factory=lambda: [1, 16])
    warmup_rounds: int = 1
    test_rounds: int = 3
    output_dir: str = "bench/results"  # CSV, plots and notes (with the GPU) go here
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    num_prompts: int = 1000
    request_rate: float = math.inf  # api_serving: Poisson arrivals per second; inf = closed loop
    server_url: str = "http://127.0.0.1:23333"  # api_serving: a running `nybble frontend=api`
    request_timeout: float = 600.0  # api_serving: seconds before a request counts as failed
    seed: int = 0
    # decode_ablation: which ops to leave out (null = every one it knows)
    ablations: list[str] | None = None


@dataclass
class ConvertConfig(NybbleConfig):
    """``nybble-convert``: the workspace folder to write from ``model.path``."""

    output: str = MISSING  # required: nybble-convert ... output=./workspace
    overwrite: bool = False  # replace an existing non-empty output folder


SCHEMAS: dict[str, type[NybbleConfig]] = {
    "config": NybbleConfig,
    "bench": BenchConfig,
    "convert": ConvertConfig,
}


def register_schemas(frontends: Sequence[str] = (), weight_formats: Sequence[str] = ()) -> None:
    """Store the schemas in Hydra's ConfigStore (the roots name them in their defaults lists).

    ``frontends`` and ``weight_formats`` are names plugins registered: each one without a yaml
    file in conf/ becomes a group option too, so ``frontend=hello`` works for a third-party
    frontend exactly as ``frontend=api`` does for a built-in one.
    """
    cs = ConfigStore.instance()
    for root, schema in SCHEMAS.items():
        cs.store(name=f"{'nybble' if root == 'config' else root}_schema", node=schema)
    for name in frontends:
        if name not in group_options("frontend"):
            cs.store(group="frontend", name=name, node=FrontendConfig(name=name))
    for name in weight_formats:
        if name not in group_options("quant"):
            cs.store(group="quant", name=name, node=QuantConfig(name=name))


def register_plugin_schemas() -> None:
    """``register_schemas`` with the names of the loaded plugins' frontends and weight formats."""
    from core.plugins import get_registries

    regs = get_registries()
    register_schemas(regs.frontends.names(), regs.weight_formats.names())


def group_options(group: str) -> list[str]:
    """The choices of a group: conf/<group>/*.yaml and options plugins added to the ConfigStore."""
    names = {
        f.name.removesuffix(".yaml")
        for f in resources.files(CONFIG_MODULE).joinpath(group).iterdir()
        if f.name.endswith(".yaml")
    }
    stored = ConfigStore.instance().repo.get(group, {})
    names.update(n.removesuffix(".yaml") for n in stored)
    return sorted(names)


def bench_tasks() -> list[str]:
    """The benchmarks ``nybble-bench task=`` can run: modules of bench/ with a top-level
    ``run(cfg)`` (found by parsing, so listing them imports no GPU code)."""
    import bench

    tasks = []
    for info in pkgutil.iter_modules(bench.__path__):
        path = Path(info.module_finder.path) / f"{info.name}.py"  # type: ignore[union-attr]
        if info.name.startswith("_") or info.ispkg or not path.exists():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        if any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body):
            tasks.append(info.name)
    return sorted(tasks)


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> NybbleConfig:
    """Compose conf/<config_name>.yaml with ``overrides`` (``key=value``, ``group=option``).

    Returns the validated dataclass (NybbleConfig, or BenchConfig / ConvertConfig for the
    ``bench`` / ``convert`` roots). Raises ConfigError naming the key, value and expected.
    """
    if config_name not in SCHEMAS:
        _fail("config_name", config_name, "one of " + ", ".join(SCHEMAS))
    register_plugin_schemas()
    overrides = list(overrides)
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise explain(e, SCHEMAS[config_name]) from None
    return check(cfg, config_name)


def check(cfg: DictConfig | NybbleConfig, config_name: str = "config") -> NybbleConfig:
    """The composed config as its dataclass, validated (also what the CLI apps call)."""
    schema = SCHEMAS[config_name]
    if not isinstance(cfg, NybbleConfig):
        _reject_unknown_keys(cfg, schema)
        try:
            cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
        except MissingMandatoryValue as e:
            raise ConfigError(f"{e.full_key} is required: add {e.full_key}=<value>") from None
        except OmegaConfBaseException as e:
            raise explain(e, schema) from None
    validate(cfg)
    if isinstance(cfg, BenchConfig):
        validate_bench(cfg)
    return cfg


def validate_bench(cfg: BenchConfig) -> None:
    """Check the benchmark options (the groups are checked by core.config.validate)."""
    if not cfg.concurrency or any(c < 1 for c in cfg.concurrency):
        _fail("concurrency", cfg.concurrency, "a non-empty list of positive integers")
    if any(b < 1 for b in cfg.baseline_batches):
        _fail("baseline_batches", cfg.baseline_batches, "a list of positive integers (or [])")
    for pair in cfg.token_pairs:
        if len(pair) != 2 or pair[0] < 0 or pair[1] < 1:
            _fail(
                "token_pairs", cfg.token_pairs, "[prompt tokens >= 0, completion tokens >= 1] pairs"
            )
    for key in ("test_rounds", "num_prompts"):
        if getattr(cfg, key) < 1:
            _fail(key, getattr(cfg, key), "a positive integer")
    if cfg.warmup_rounds < 0:
        _fail("warmup_rounds", cfg.warmup_rounds, "an integer >= 0")
    if not cfg.request_timeout > 0:
        _fail("request_timeout", cfg.request_timeout, "seconds > 0")
    if not cfg.request_rate > 0:
        _fail("request_rate", cfg.request_rate, "requests per second > 0 (inf = all at once)")
    tasks = bench_tasks()
    if cfg.task not in tasks:
        _fail("task", cfg.task, "one of " + (", ".join(tasks) or "(no benchmark in bench/)"))


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _field_type(full_key: str, schema: type) -> Any:
    """The declared type of ``full_key`` (``engine.max_batch_size``, ``token_pairs[0][1]``)."""
    tp: Any = schema
    for part in full_key.split("."):
        name, *indices = part.replace("]", "").split("[")
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if name not in hints:
            return None
        tp = hints[name]
        for _ in indices:  # an element of a list
            args = typing.get_args(tp)
            if typing.get_origin(tp) is not list or not args:
                return None
            tp = args[0]
    return tp


def _describe(tp: Any) -> str:
    """'an integer', 'a list of integers', 'an integer or null', ... for a type hint."""
    if tp in _TYPE_WORDS:
        return _TYPE_WORDS[tp]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if type(None) in typing.get_args(tp) and len(args) == 1:
        return f"{_describe(args[0])} or null"
    if typing.get_origin(tp) is list and args:
        inner = _describe(args[0]).removeprefix("an ").removeprefix("a ")
        return (
            f"a list of {inner}s"
            if inner in ("integer", "number", "string")
            else f"a list of {inner}"
        )
    return f"a value of type {getattr(tp, '__name__', tp)}"


def _known_keys(full_key: str, schema: type) -> list[str]:
    """The settings beside ``full_key`` (for the 'known:' list of an unknown-key error)."""
    parent = full_key.rpartition(".")[0]
    tp = _field_type(parent, schema) if parent else schema
    return sorted(f.name for f in dataclasses.fields(tp)) if dataclasses.is_dataclass(tp) else []


def _reject_unknown_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Raise for keys the schema lacks (``+key=value`` appends them past Hydra's struct check)."""
    names = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in node:
        full_key = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{full_key}: no such setting; known: {known}")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(hints[key]):
            _reject_unknown_keys(child, hints[key], f"{full_key}.")


def explain(e: Exception, schema: type = NybbleConfig) -> ConfigError:
    """Turn a Hydra/OmegaConf composition error into a ConfigError a person can act on."""
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options is not None:
        group, _, option = e.missing_cfg_file.rpartition("/")
        if group:
            options = ", ".join(sorted(e.options)) or "(none)"
            return ConfigError(f"{group}={option!r}: expected one of {options} (conf/{group}/)")
    if isinstance(e, OverrideParseException):
        return ConfigError(
            f"cannot parse {e.override!r}: write overrides as key=value or group=option"
        )
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
    full_key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and full_key:
        known = _known_keys(full_key, schema)
        hint = f"; known: {', '.join(known)}" if known else ""
        return ConfigError(f"{full_key}: no such setting{hint}")
    if isinstance(cause, ValidationError) and full_key:
        tp = _field_type(full_key, schema)
        expected = _describe(tp) if tp is not None else str(cause).splitlines()[0]
        return ConfigError(f"{full_key}={cause.value!r}: expected {expected}")
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ConfigError(first_line)
