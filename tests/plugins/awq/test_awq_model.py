"""A tiny model quantized with plugins/awq/quantize.py, served through the AWQ format."""

from __future__ import annotations

import pytest
import torch

from core.checkpoint import CheckpointError
from core.config import QuantConfig
from core.model_runner import ModelRunner
from core.plugins import get_registries
from tests.awq_checkpoint import dequantized_state, write_awq_checkpoint
from tests.conftest import tiny_config, tiny_model_config, write_llama_checkpoint
from tests.plugins.models.internlm.test_model_vs_llama import run_prefill_logits

SIZES = dict(hidden_size=128, intermediate_size=256)
PROMPTS = [[3, 14, 15, 92, 65], list(range(40, 77))]


def runner(path, quant: QuantConfig | None = None):
    cfg = tiny_config(tiny_model_config(path=str(path), **SIZES))
    if quant is not None:
        cfg.quant = quant
    return ModelRunner(cfg, get_registries())


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("layout", ["autoawq", "lmdeploy"])
def test_awq_model_equals_its_dequantized_weights_and_stays_near_the_dense_model(
    tmp_path, group_size, layout
):
    llama = write_llama_checkpoint(tmp_path / "hf", bias=False, **SIZES)
    awq = write_awq_checkpoint(tmp_path / "hf", tmp_path / "awq", group_size, layout)
    r = runner(awq)
    assert r.format.name == "awq" and r.format_params["group_size"] == group_size
    got = run_prefill_logits(r, PROMPTS)
    dense = [llama(torch.tensor([p])).logits[0].detach() for p in PROMPTS]
    # exact reference: transformers' Llama holding the dequantized weights (fp16 embeddings)
    llama.load_state_dict(dequantized_state(awq, group_size))
    exact = [llama(torch.tensor([p])).logits[0].detach() for p in PROMPTS]
    for g, e, d in zip(got, exact, dense):
        assert (g - e).abs().max().item() < 1e-4
        # stated tolerance of 4-bit RTN on this model: logits correlate > 0.98 with the dense ones
        cos = torch.nn.functional.cosine_similarity(g, d, dim=-1)
        assert cos.min().item() > 0.98


def test_group_size_override_that_contradicts_the_checkpoint_fails(tmp_path):
    write_llama_checkpoint(tmp_path / "hf", bias=False, **SIZES)
    awq = write_awq_checkpoint(tmp_path / "hf", tmp_path / "awq", 64, "lmdeploy")
    with pytest.raises(
        CheckpointError, match="quant.group_size=128 but the checkpoint has group size 64"
    ):
        runner(awq, QuantConfig(name="awq", group_size=128))
    assert runner(awq, QuantConfig(name="awq", group_size=64)).format.name == "awq"
