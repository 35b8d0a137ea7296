"""decode_ablation: its stand-ins take the right ops out of a real model and put them back (the
timing itself needs a GPU: test_decode_profile checks it says so)."""

from __future__ import annotations

import pytest
import torch

from bench import decode_ablation
from tests.engine_fixtures import PROMPTS, greedy, make_engine, run_all


@pytest.fixture(scope="module")
def engine():
    engine = make_engine()
    # the first run fills the prefix cache; later runs of the same prompts reuse it, whose
    # logprobs may differ from the uncached prefill's in the last bit: every compared run is
    # then a cached one
    _logits(engine)
    return engine


def _logits(engine) -> torch.Tensor:
    """Greedy tokens of a few prompts and their logprobs (what an ablation changes)."""
    for i, p in enumerate(PROMPTS[:3]):
        engine.add_request(p, greedy(4, logprobs=0), f"t{i}")
    done = run_all(engine)
    return torch.tensor([[(lp.token_id, lp.logprob) for lp in done[f"t{i}"].outputs[0].logprobs]
                         for i in range(3)])  # fmt: skip


@pytest.mark.parametrize("ablation, per_layer, extra", [
    ("silu_mul", 1, 0), ("norm", 2, 1), ("attention", 1, 0), ("rope_store", 0, 0),
])  # fmt: skip
def test_each_ablation_replaces_its_ops_and_restores_them(engine, ablation, per_layer, extra):
    model = engine.runner.model
    layers = engine.model_config.num_layers
    before = _logits(engine)
    originals = {id(m): dict(vars(m)) for m in model.modules()}
    restore = decode_ablation.ablate(model, ablation)
    try:
        changed = [m for m in model.modules() if any(
            vars(m).get(k) is not v for k, v in originals[id(m)].items() if k.startswith("_"))]  # fmt: skip
        assert changed, "nothing was replaced"
        assert decode_ablation.launches_removed(model, ablation) == per_layer * layers + extra
        assert not torch.equal(_logits(engine), before), "leaving the op out changed nothing"
    finally:
        restore()
    assert torch.equal(_logits(engine), before)
    for m in model.modules():  # every op is the original object again
        for k, v in originals[id(m)].items():
            assert vars(m).get(k) is v, (type(m).__name__, k)


def test_split_k_sum_swaps_the_tensor_core_gemv_kernel_and_restores_it(engine):
    from plugins.awq import mma_gemv

    original = mma_gemv._awq_mma_gemv_kernel
    restore = decode_ablation.ablate(engine.runner.model, "split_k_sum")
    try:
        variant = mma_gemv._awq_mma_gemv_kernel
        assert variant is not original
        # the same launch signature: awq_mma_gemv passes it the same arguments
        assert variant.arg_names == original.arg_names
        assert decode_ablation.launches_removed(engine.runner.model, "split_k_sum") == 0
    finally:
        restore()
    assert mma_gemv._awq_mma_gemv_kernel is original


def test_stand_ins_keep_shapes(engine):
    model = engine.runner.model
    x = torch.randn(3, 2 * 128)
    restore = decode_ablation.ablate(model, "silu_mul")
    try:
        act = next(m for m in model.modules() if type(m).__name__ == "SiluAndMul")
        assert act(x).shape == (3, 128)
    finally:
        restore()


def test_an_unknown_ablation_names_the_choices(engine):
    with pytest.raises(ValueError, match="unknown ablation 'lm_head': one of silu_mul, rope"):
        decode_ablation.ablate(engine.runner.model, "lm_head")


def test_ablations_option_picks_them_in_order_and_names_unknown_ones():
    assert decode_ablation.chosen_ablations(None) == list(decode_ablation.ABLATIONS)
    assert decode_ablation.chosen_ablations(["rope_store", "split_k_sum"]) == [
        "rope_store", "split_k_sum",
    ]  # fmt: skip
    assert decode_ablation.chosen_ablations([]) == []
    with pytest.raises(SystemExit, match="ablations=.*unknown 'lm_head'; choose from silu_mul"):
        decode_ablation.chosen_ablations(["norm", "lm_head"])
    # the GEMM's own reduction runs only with kernels.split_k_sum=gemm
    assert "split_k_sum" not in decode_ablation.chosen_ablations(None, "consumer")
    with pytest.raises(SystemExit, match="add kernels.split_k_sum=gemm"):
        decode_ablation.chosen_ablations(["split_k_sum"], "consumer")


def test_stand_ins_view_partial_sums_without_copying():
    from core.partial_sums import PartialSums

    p = PartialSums(torch.randn(3, 2, 10), torch.float16)
    v = decode_ablation._view(p)
    assert v.shape == (2, 10) and v.dtype == torch.float16
    assert v.untyped_storage().data_ptr() == p.parts.untyped_storage().data_ptr()
    assert decode_ablation._halve(p).shape == (2, 5)
    t = torch.zeros(2, 4)
    assert decode_ablation._view(t) is t
