"""conf/ and core/compose.py: every option of every group composes for every root, the presets
hold the published values, and a bad value fails naming the key, the value and what is expected."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import pytest
import yaml

from core.compose import (
    GROUPS,
    BenchConfig,
    ConvertConfig,
    bench_tasks,
    compose_config,
)
from core.config import ConfigError, NybbleConfig
from core.plugins import get_registries

CONF = resources.files("conf")
ROOTS = {"config": [], "bench": [], "convert": ["output=/tmp/nybble-workspace"]}
SHARED_DATA = Path(
    os.environ.get(
        "NYBBLE_INTERNLM_DATA",
        Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "internlm",
    )
)


def yaml_options(group: str) -> list[str]:
    return sorted(
        f.name.removesuffix(".yaml")
        for f in CONF.joinpath(group).iterdir()
        if f.name.endswith(".yaml")
    )


def read_option(group: str, option: str) -> dict:
    return yaml.safe_load(CONF.joinpath(group, f"{option}.yaml").read_text())


def option_rounds() -> list[list[tuple[str, str]]]:
    """Rounds of (group, option) pairs, one option per group per round, so that every option of
    every group is chosen in some round (as many rounds as the largest group has options)."""
    options = {g: yaml_options(g) for g in GROUPS}
    rounds = max(len(o) for o in options.values())
    return [[(g, o[i % len(o)]) for g, o in options.items()] for i in range(rounds)]


def test_the_groups_and_their_options():
    assert yaml_options("model") == ["internlm-chat-20b", "internlm-chat-7b", "internlm-tiny"]
    assert yaml_options("quant") == ["auto", "awq", "none"]
    assert yaml_options("kernels") == ["auto", "torch", "triton"]
    assert {"default"} <= set(yaml_options("engine"))
    assert yaml_options("sampling") == ["default"]
    assert yaml_options("frontend") == ["api", "chat", "gradio", "triton"]


@pytest.mark.parametrize("root", sorted(ROOTS))
@pytest.mark.parametrize("choices", option_rounds(), ids=lambda c: ",".join(o for _, o in c))
def test_every_option_composes(root, choices):
    overrides = [f"{group}={option}" for group, option in choices]
    cfg = compose_config([*overrides, *ROOTS[root]], config_name=root)
    assert isinstance(
        cfg, {"config": NybbleConfig, "bench": BenchConfig, "convert": ConvertConfig}[root]
    )
    for group, option in choices:  # every value of the chosen files reaches the config
        chosen = getattr(cfg, group)
        for key, value in read_option(group, option).items():
            assert getattr(chosen, key) == value, f"conf/{group}/{option}.yaml: {key}"


def test_rounds_cover_every_option():
    covered = {pair for round_ in option_rounds() for pair in round_}
    assert covered == {(g, o) for g in GROUPS for o in yaml_options(g)}


@pytest.mark.parametrize("group", ["model", "quant", "frontend"])
def test_file_name_is_the_registry_key(group):
    for option in yaml_options(group):
        assert read_option(group, option)["name"] == option, f"conf/{group}/{option}.yaml"


def test_kernels_options_name_their_backend():
    for option in yaml_options("kernels"):
        assert read_option("kernels", option) == {"backend": option}


def test_config_options_exist_as_plugins():
    regs = get_registries()
    assert set(yaml_options("frontend")) <= set(regs.frontends.names())
    assert set(yaml_options("quant")) - {"auto"} <= set(regs.weight_formats.names())


def test_defaults():
    cfg = compose_config()
    assert cfg.model.name == "internlm-tiny" and cfg.model.path is None
    assert (cfg.quant.name, cfg.kernels.backend, cfg.frontend.name) == ("auto", "auto", "chat")
    s = cfg.sampling
    assert (s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.max_new_tokens) == (
        0.8, 0.8, 40, 1.0, 512,
    )  # fmt: skip


def test_tiny_model_is_tiny():
    m = compose_config(["model=internlm-tiny"]).model
    assert (m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size) == (2, 64, 4, 128)
    assert m.vocab_size == 103168  # the real tokenizer fits
    assert m.path is None and m.load_format == "auto"  # random weights, offline


@pytest.mark.parametrize("model", ["internlm-chat-7b", "internlm-chat-20b"])
def test_presets_match_the_published_config_json(model):
    path = SHARED_DATA / f"{model}.config.json"
    if not path.exists():
        pytest.skip(f"{path} is not there (set NYBBLE_INTERNLM_DATA)")
    hf = json.loads(path.read_text())
    m = compose_config([f"model={model}"]).model
    assert m.architecture == hf["architectures"][0]
    assert m.hidden_size == hf["hidden_size"]
    assert m.intermediate_size == hf["intermediate_size"]
    assert m.num_layers == hf["num_hidden_layers"]
    assert m.num_heads == hf["num_attention_heads"]
    assert m.vocab_size == hf["vocab_size"]
    assert m.max_position_embeddings == hf["max_position_embeddings"]
    assert m.rms_norm_eps == hf["rms_norm_eps"]
    assert m.bias == hf["bias"]
    assert (m.bos_token_id, m.eos_token_id) == (hf["bos_token_id"], hf["eos_token_id"])
    rotary = hf.get("rotary", {})
    assert m.rope_base == rotary.get("base", 10000)
    assert m.rope_scaling == rotary.get("type")


def test_20b_preset():
    m = compose_config(["model=internlm-chat-20b"]).model
    assert (m.num_layers, m.hidden_size, m.bias, m.rope_scaling) == (60, 5120, False, "dynamic")
    assert m.session_len == 8192  # shared/data/internlm/README.md


def test_frontend_ports():
    def ports(name):
        f = compose_config([f"frontend={name}"]).frontend
        return f.port, f.grpc_port, f.metrics_port

    assert ports("api")[0] == 23333
    assert ports("gradio")[0] == 6006
    assert ports("triton") == (8000, 8001, 8002)


def test_awq_is_int4_group_128():
    q = compose_config(["quant=awq"]).quant
    assert (q.name, q.bits, q.group_size) == ("awq", 4, 128)


def test_overrides_reach_the_config():
    cfg = compose_config(["frontend=api", "frontend.port=8080", "engine.max_batch_size=4"])
    assert (cfg.frontend.port, cfg.engine.max_batch_size) == (8080, 4)
    cfg = compose_config(["+frontend.extra.prompt=hi", "model.path=/models/x"])
    assert cfg.frontend.extra == {"prompt": "hi"} and cfg.model.path == "/models/x"


def test_bench_root():
    cfg = compose_config(["concurrency=[1,8]", "token_pairs=[[128,128]]"], config_name="bench")
    assert cfg.task == "token_throughput" and cfg.task in bench_tasks()
    assert cfg.concurrency == [1, 8] and cfg.token_pairs == [[128, 128]]
    assert cfg.output_dir == "bench/results" and cfg.request_rate == float("inf")


def test_convert_root():
    cfg = compose_config(["output=./ws", "model.path=/m", "quant=awq"], config_name="convert")
    assert (cfg.output, cfg.model.path, cfg.quant.name) == ("./ws", "/m", "awq")


# (overrides, root, words the message must contain)
BAD = [
    (["engine.max_batch_size=-1"], "config", ["engine.max_batch_size=-1", "positive integer"]),
    (["engine.max_batch_size=abc"], "config", ["engine.max_batch_size='abc'", "an integer"]),
    (["model=unknown"], "config", ["model='unknown'", "internlm-chat-20b, internlm-chat-7b, internlm-tiny"]),
    (["frontend=unknown"], "config", ["frontend='unknown'", "api, chat, gradio, triton"]),
    (["frontend.name=unknown"], "config", ["frontend.name='unknown'", "api, chat, gradio, triton"]),
    (["quant.group_size=100"], "config", ["quant.group_size=100", "32, 64, 128"]),
    (["quant=int3"], "config", ["quant='int3'", "auto, awq, none"]),
    (["sampling.top_p=2"], "config", ["sampling.top_p=2", "(0, 1]"]),
    (["sampling.temperature=-1"], "config", ["sampling.temperature=-1", ">= 0"]),
    (["engine.cuda_graphs=maybe"], "config", ["engine.cuda_graphs='maybe'", "true or false"]),
    (["model.num_kv_heads=x"], "config", ["model.num_kv_heads='x'", "an integer or null"]),
    (["model.num_heads=3"], "config", ["model.num_heads=3", "divisor of model.hidden_size=64"]),
    (["engine.dtype=fp8"], "config", ["engine.dtype='fp8'", "float16"]),
    (["kernels.backend=cuda"], "config", ["kernels.backend='cuda'", "triton"]),
    (["kernels.split_k_sum=gpu"], "config", ["kernels.split_k_sum='gpu'", "gemm, consumer"]),
    (["engine.max_bach_size=4"], "config", ["engine.max_bach_size", "no such setting", "max_batch_size"]),
    (["+engine.typo=4"], "config", ["engine.typo", "no such setting"]),
    (["model=[a"], "config", ["model=[a", "key=value"]),
    (["task=nope"], "bench", ["task='nope'", "one of"]),
    (["concurrency=[1,x]"], "bench", ["concurrency[1]='x'", "an integer"]),
    (["concurrency=[0]"], "bench", ["concurrency=[0]", "positive"]),
    (["token_pairs=[[128]]"], "bench", ["token_pairs=[[128]]", "pairs"]),
    ([], "convert", ["output is required", "output=<value>"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "root", "words"), BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_bad_values_name_key_value_and_expected(overrides, root, words):
    with pytest.raises(ConfigError) as err:
        compose_config(overrides, config_name=root)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_task_lists_the_benchmarks():
    with pytest.raises(ConfigError) as err:
        compose_config(["task=nope"], config_name="bench")
    for task in bench_tasks():
        assert task in str(err.value)
