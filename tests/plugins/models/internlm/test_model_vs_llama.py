"""InternLM against an independent implementation: transformers' LlamaForCausalLM."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.block_manager import BlockManager
from core.model_runner import ModelRunner
from core.plugins import get_registries
from core.sampling_params import SamplingParams
from core.scheduler import ScheduledBatch
from core.sequence import Sequence
from tests.conftest import tiny_config, tiny_model_config, write_llama_checkpoint


def run_prefill_logits(runner: ModelRunner, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Every position's logits for a batch of prompts in one flattened step."""
    bm = BlockManager(runner.num_blocks, runner.block_size, enable_prefix_caching=False)
    seqs = [Sequence(f"r{i}", p, SamplingParams()) for i, p in enumerate(prompts)]
    for s in seqs:
        assert bm.allocate_slots(s, len(s))
    batch = ScheduledBatch(seqs=seqs, num_tokens=[len(p) for p in prompts])
    ids, pos, meta, _ = runner.prepare(batch)
    with torch.inference_mode():
        hidden = runner.model(ids, pos, meta)
        logits = runner.model.compute_logits(hidden)
    return list(logits.split([len(p) for p in prompts]))


@pytest.mark.parametrize("bias", [False, True], ids=["20b-style", "7b-style-bias"])
def test_logits_match_transformers_llama(tmp_path, bias):
    llama = write_llama_checkpoint(tmp_path, bias=bias)
    cfg = tiny_config(tiny_model_config(path=str(tmp_path)))
    runner = ModelRunner(cfg, get_registries())
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 1000, (n,), generator=gen).tolist() for n in (1, 7, 23, 40)]
    ours = run_prefill_logits(runner, prompts)
    for p, got in zip(prompts, ours):
        with torch.no_grad():
            want = llama(torch.tensor([p])).logits[0]
        assert got.shape == want.shape
        assert (got - want).abs().max().item() < 1e-4


def test_dynamic_ntk_matches_transformers_past_max_positions(tmp_path):
    rope = {"rope_type": "dynamic", "factor": 1.0}
    llama = write_llama_checkpoint(
        tmp_path, bias=False, rope_scaling=rope, max_position_embeddings=16
    )
    mc = tiny_model_config(path=str(tmp_path), max_position_embeddings=16)
    runner = ModelRunner(tiny_config(mc), get_registries())
    assert runner.model_config.rope_scaling == "dynamic"
    prompt = torch.randint(0, 1000, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    (got,) = run_prefill_logits(runner, [prompt])
    with torch.no_grad():
        want = llama(torch.tensor([prompt])).logits[0]
    # the last position sees the whole 40-token context, 2.5x max_position_embeddings
    assert (got[-1] - want[-1]).abs().max().item() < 1e-4


def test_missing_and_misshaped_tensors_fail_with_their_names(tmp_path):
    from safetensors.torch import load_file, save_file

    from core.checkpoint import CheckpointError
    from core.layers.linear import WeightShapeError

    write_llama_checkpoint(tmp_path, bias=False)
    (file,) = tmp_path.glob("*.safetensors")
    state = load_file(str(file))
    good = dict(state)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(100, 64)
    save_file(state, str(file), metadata={"format": "pt"})
    cfg = tiny_config(tiny_model_config(path=str(tmp_path)))
    with pytest.raises(
        WeightShapeError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(100, 64\).*\(128, 64\)"
    ):
        ModelRunner(cfg, get_registries())
    del good["model.layers.0.self_attn.o_proj.weight"]
    save_file(good, str(file), metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError, match=r"missing tensors.*layers\.0\.self_attn\.o_proj\.weight"
    ):
        ModelRunner(cfg, get_registries())


def test_bf16_checkpoint_is_cast_to_the_configured_dtype(tmp_path):
    from safetensors.torch import load_file, save_file

    write_llama_checkpoint(tmp_path, bias=False)
    (file,) = tmp_path.glob("*.safetensors")
    bf16 = {k: v.to(torch.bfloat16) for k, v in load_file(str(file)).items()}
    save_file(bf16, str(file), metadata={"format": "pt"})
    cfg = tiny_config(tiny_model_config(path=str(tmp_path)))
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, dtype="float32"))
    runner = ModelRunner(cfg, get_registries())
    assert all(p.dtype == torch.float32 for p in runner.model.parameters())
