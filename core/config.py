"""Typed schemas behind conf/ (registered in Hydra's ConfigStore) and their validation.

Hydra checks types when it composes; ``validate`` checks values and names against the plugin
registries, so a bad setting fails at start-up with the key, the value and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MISSING = "???"  # omegaconf's marker for a required value (omegaconf is imported lazily, so
# the engine also runs where Hydra is not installed, e.g. on the GPU machine)

DTYPES = ("auto", "float16", "bfloat16", "float32")
DEVICES = ("auto", "cpu", "cuda")
LOAD_FORMATS = ("auto", "dummy")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and the fix."""


@dataclass
class ModelConfig:
    """Which model to serve and its architecture (read from the checkpoint when present)."""

    name: str = MISSING  # preset name = conf/model/<name>.yaml
    path: str | None = None  # Hugging Face folder or nybble workspace; None = random weights
    architecture: str = "InternLMForCausalLM"
    hidden_size: int = 5120
    intermediate_size: int = 13824
    num_layers: int = 60
    num_heads: int = 40
    num_kv_heads: int | None = None  # None = num_heads (no GQA)
    vocab_size: int = 103168
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    bias: bool = False  # q/k/v/o bias (internlm-chat-7b: true)
    rope_base: float = 10000.0
    rope_scaling: str | None = None  # None or "dynamic" (dynamic NTK)
    rope_scaling_factor: float = 1.0
    bos_token_id: int = 1
    eos_token_id: int = 2
    chat_template: str = "internlm-chat"
    session_len: int = 8192  # longest conversation (prompt + answer) in tokens
    tokenizer: str | None = None  # tokenizer.model path; default: <path>/tokenizer.model
    load_format: str = "auto"  # auto: from model.path (random if none); dummy: random weights
    seed: int = 0  # seed for random weights


@dataclass
class QuantConfig:
    """Weight format: "auto" detects it from the checkpoint; else a registered format name."""

    name: str = "auto"
    bits: int = 4
    group_size: int = 128


@dataclass
class KernelsConfig:
    backend: str = "auto"  # auto (triton on CUDA, torch elsewhere), triton, torch
    # who adds a decode GEMM's split-K partial sums: the op that reads its output, as it loads it
    # (consumer: core/partial_sums.py), or the GEMM itself (gemm)
    split_k_sum: str = "consumer"


@dataclass
class EngineConfig:
    """Batching, KV cache and device settings."""

    device: str = "auto"
    dtype: str = "auto"  # auto: float16 on CUDA, float32 on CPU
    max_batch_size: int = 16  # batch slots: sequences running at once
    max_num_batched_tokens: int = 2048  # token budget of one step (prefill chunks + decodes)
    block_size: int = 16  # tokens per KV cache block
    gpu_memory_utilization: float = 0.9  # fraction of GPU memory nybble may use in all
    cpu_kv_cache_bytes: int = 256 * 1024 * 1024  # KV cache budget on CPU
    num_kv_blocks: int | None = None  # fixes the number of KV blocks (tests, benchmarks)
    cuda_graphs: bool = True
    # with cuda_graphs: a one-sequence prefill step replays a graph (tokens padded to 16, 32, ...
    # 2048) instead of ~840 launches; false runs every prefill eagerly
    prefill_graphs: bool = True
    # report step N (detokenize, stop strings, outputs) while step N + 1 runs on the device
    async_output: bool = True
    # launch decode step N + 1 before step N's tokens reach the host (fed on the device); needs
    # async_output
    async_scheduling: bool = True
    # Triton kernels launch with programmatic dependent launch on Hopper and newer GPUs: each may
    # start while the one before it finishes (core/ops/pdl.py); no effect elsewhere
    pdl: bool = True
    max_graph_batch_size: int = 64
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = 1
    seed: int = 0


@dataclass
class SamplingConfig:
    """Defaults for requests that do not set these themselves."""

    temperature: float = 0.8
    top_p: float = 0.8
    top_k: int = 40
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 512


@dataclass
class FrontendConfig:
    """Which frontend runs, and the options of the built-in ones (unused ones are ignored)."""

    name: str = "chat"
    host: str = "127.0.0.1"
    port: int = 23333
    share: bool = False  # gradio: public share link
    server_url: str | None = None  # gradio: talk to a running `nybble frontend=api` server
    api_keys: list[str] = field(default_factory=list)  # api: accepted Bearer keys; empty = open
    cors_origins: list[str] = field(default_factory=list)
    max_running_requests: int = 256
    max_queued_requests: int = 1024
    max_body_bytes: int = 4 * 1024 * 1024
    grpc_port: int = 8001  # triton
    metrics_port: int = 8002  # triton
    extra: dict[str, Any] = field(default_factory=dict)  # options of third-party frontends


@dataclass
class NybbleConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)


def _fail(key: str, value: Any, expected: str) -> None:
    raise ConfigError(f"{key}={value!r}: expected {expected}")


def _positive(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        _fail(key, value, "a positive integer")


def _choice(key: str, value: Any, choices: tuple | list) -> None:
    if value not in choices:
        _fail(key, value, "one of " + ", ".join(map(str, choices)))


def to_config(cfg: Any) -> NybbleConfig:
    """A plain NybbleConfig (dataclasses) from a composed Hydra config (a DictConfig)."""
    if isinstance(cfg, NybbleConfig):
        return cfg
    from omegaconf import OmegaConf

    obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(NybbleConfig), cfg))
    assert isinstance(obj, NybbleConfig)
    return obj


def validate(cfg: NybbleConfig) -> NybbleConfig:
    """Check values and plugin names; raise ConfigError naming the key, value and expectation."""
    from core.plugins import get_registries

    regs = get_registries()
    m, e, s, q = cfg.model, cfg.engine, cfg.sampling, cfg.quant
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_heads",
        "vocab_size",
        "max_position_embeddings",
        "session_len",
    ):
        _positive(f"model.{key}", getattr(m, key))
    if m.num_kv_heads is not None:
        _positive("model.num_kv_heads", m.num_kv_heads)
        if m.num_heads % m.num_kv_heads:
            _fail(
                "model.num_kv_heads", m.num_kv_heads, f"a divisor of model.num_heads={m.num_heads}"
            )
    if m.hidden_size % m.num_heads:
        _fail("model.num_heads", m.num_heads, f"a divisor of model.hidden_size={m.hidden_size}")
    if m.architecture not in regs.models:
        _choice("model.architecture", m.architecture, regs.models.names())
    if m.chat_template not in regs.chat_templates:
        _choice("model.chat_template", m.chat_template, regs.chat_templates.names())
    _choice("model.rope_scaling", m.rope_scaling, (None, "dynamic"))
    _choice("model.load_format", m.load_format, LOAD_FORMATS)
    if q.name != "auto" and q.name not in regs.weight_formats:
        _choice("quant.name", q.name, ["auto", *regs.weight_formats.names()])
    _choice("quant.group_size", q.group_size, (32, 64, 128))
    _choice("quant.bits", q.bits, (4,))
    from core.kernels import BACKENDS, SPLIT_K_SUMS

    _choice("kernels.backend", cfg.kernels.backend, BACKENDS)
    _choice("kernels.split_k_sum", cfg.kernels.split_k_sum, SPLIT_K_SUMS)
    _choice("engine.device", e.device, DEVICES)
    _choice("engine.dtype", e.dtype, DTYPES)
    for key in (
        "max_batch_size",
        "max_num_batched_tokens",
        "block_size",
        "cpu_kv_cache_bytes",
        "max_graph_batch_size",
        "tensor_parallel_size",
    ):
        _positive(f"engine.{key}", getattr(e, key))
    if e.num_kv_blocks is not None:
        _positive("engine.num_kv_blocks", e.num_kv_blocks)
    if e.async_scheduling and not e.async_output:
        _fail(
            "engine.async_scheduling",
            e.async_scheduling,
            "false when engine.async_output=false (it launches steps ahead of their outputs)",
        )
    if not 0.0 < e.gpu_memory_utilization <= 1.0:
        _fail("engine.gpu_memory_utilization", e.gpu_memory_utilization, "a fraction in (0, 1]")
    if s.temperature < 0:
        _fail("sampling.temperature", s.temperature, "a number >= 0 (0 = greedy)")
    if not 0.0 < s.top_p <= 1.0:
        _fail("sampling.top_p", s.top_p, "a number in (0, 1]")
    if s.top_k < -1 or s.top_k == 0:
        _fail("sampling.top_k", s.top_k, "-1 (off) or a positive integer")
    if not 0.0 <= s.min_p <= 1.0:
        _fail("sampling.min_p", s.min_p, "a number in [0, 1]")
    if s.repetition_penalty <= 0:
        _fail("sampling.repetition_penalty", s.repetition_penalty, "a number > 0 (1 = off)")
    _positive("sampling.max_new_tokens", s.max_new_tokens)
    if cfg.frontend.name not in regs.frontends:
        _choice("frontend.name", cfg.frontend.name, regs.frontends.names())
    return cfg
