"""Shared fixtures: tiny random InternLM checkpoints and configs, built in seconds on a CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Triton kernels run in its interpreter where there is no GPU (CI); Triton reads this when a
# kernel module is imported, so it is set here, before any test module imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from core.config import EngineConfig, ModelConfig, NybbleConfig

# the real InternLM tokenizer and configs, beside the checkout (never copied into it)
SHARED_DATA = Path(
    os.environ.get(
        "NYBBLE_INTERNLM_DATA",
        Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "internlm",
    )
)
TOKENIZER_PATH = SHARED_DATA / "tokenizer.model"
needs_tokenizer = pytest.mark.skipif(
    not TOKENIZER_PATH.is_file(),
    reason=f"InternLM tokenizer.model not found at {TOKENIZER_PATH} (set NYBBLE_INTERNLM_DATA)",
)

TINY = dict(
    hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, vocab_size=1000,
    max_position_embeddings=256, session_len=256, rms_norm_eps=1e-6,
)  # fmt: skip


def tiny_model_config(**changes) -> ModelConfig:
    return ModelConfig(name="internlm-tiny", **{**TINY, **changes})


def tiny_config(model: ModelConfig | None = None, **engine) -> NybbleConfig:
    """A plain config (no Hydra) for the tiny model on the CPU in fp32."""
    eng = EngineConfig(
        device="cpu", dtype="float32", **{"block_size": 4, "num_kv_blocks": 256, **engine}
    )
    return NybbleConfig(model=model or tiny_model_config(), engine=eng)


def write_llama_checkpoint(
    path: Path, bias: bool, seed: int = 0, rope_scaling: dict | None = None, **sizes
) -> torch.nn.Module:
    """Save a random transformers LlamaForCausalLM as an InternLM checkpoint (same tensor
    names); return the Llama model, the independent reference."""
    from transformers import LlamaConfig, LlamaForCausalLM

    s = {**TINY, **sizes}
    cfg = LlamaConfig(
        vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_layers"],
        num_attention_heads=s["num_heads"], num_key_value_heads=s["num_heads"],
        max_position_embeddings=s["max_position_embeddings"], rms_norm_eps=s["rms_norm_eps"],
        attention_bias=bias, mlp_bias=False, tie_word_embeddings=False, rope_theta=10000.0,
        rope_scaling=rope_scaling,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # HF initialises norms to 1 and biases to 0: randomise them all
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    hf = json.loads((path / "config.json").read_text())
    hf.update(architectures=["InternLMForCausalLM"], model_type="internlm", bias=bias)
    if rope_scaling:
        hf["rotary"] = {"base": 10000, "type": rope_scaling["rope_type"]}
    (path / "config.json").write_text(json.dumps(hf))
    return model


@pytest.fixture
def tokenizer_path() -> Path:
    if not TOKENIZER_PATH.exists():
        pytest.skip(
            f"the real InternLM tokenizer is not at {TOKENIZER_PATH} (set NYBBLE_INTERNLM_DATA)"
        )
    return TOKENIZER_PATH
