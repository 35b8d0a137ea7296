"""kernels.split_k_sum=consumer on a tiny AWQ model: the ops after each GEMM add its split-K
partial sums (core/partial_sums.py), and the model gives the same logits, bit for bit, as when
the GEMMs add them. On a CPU the Triton kernels run in the interpreter (fp16, as on a GPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.config import KernelsConfig
from core.layers.linear import Linear
from core.model_runner import ModelRunner
from core.partial_sums import PartialSums
from core.plugins import get_registries
from tests.awq_checkpoint import write_awq_checkpoint
from tests.conftest import tiny_config, tiny_model_config, write_llama_checkpoint
from tests.plugins.models.internlm.test_model_vs_llama import run_prefill_logits

# K = 256 and 512: two and four 128-wide chunks, so the decode configs split K
SIZES = dict(hidden_size=256, intermediate_size=512, num_heads=4)
PROMPTS = [[3, 14, 15, 92, 65], [7, 1, 8, 2, 8, 1, 8], [42]]  # 13 tokens: the decode GEMV (M <= 16)

interpreted = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="the Triton interpreter run (the GPU test is in test_gpu_engine)",
)


def runner(path, split_k_sum: str) -> ModelRunner:
    cfg = tiny_config(tiny_model_config(path=str(path), **SIZES))
    cfg = dataclasses.replace(
        cfg,
        engine=dataclasses.replace(cfg.engine, dtype="float16"),
        kernels=KernelsConfig(backend="triton", split_k_sum=split_k_sum),
    )
    return ModelRunner(cfg, get_registries())


@interpreted
def test_consumers_adding_the_partial_sums_give_the_same_logits(tmp_path):
    write_llama_checkpoint(tmp_path / "hf", bias=False, **SIZES)
    awq = write_awq_checkpoint(tmp_path / "hf", tmp_path / "awq", 128)
    want = run_prefill_logits(runner(awq, "gemm"), PROMPTS)
    r = runner(awq, "consumer")
    seen: list[str] = []
    for name, module in r.model.named_modules():
        if isinstance(module, Linear):
            module.register_forward_hook(
                lambda m, args, out, name=name: (
                    seen.append(name) if isinstance(out, PartialSums) else None
                )
            )
    got = run_prefill_logits(r, PROMPTS)
    # every projection of both layers handed on partial sums (qkv, o, gate_up, down)
    assert len(seen) == 8 and {n.rsplit(".", 1)[-1] for n in seen} == {
        "qkv_proj", "o_proj", "gate_up_proj", "down_proj",
    }  # fmt: skip
    for g, w in zip(got, want):
        assert not g.isnan().any()
        assert torch.equal(g, w)
