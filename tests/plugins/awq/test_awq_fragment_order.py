"""Fragment order (core/fragment_order.py): the tensor-core GEMV gives the same bits from it as
from row-major x, and on a tiny AWQ model at decode batch sizes the norms and SiLU x mul write
the inputs of qkv_proj, gate_up_proj and down_proj in it, with the logits of row-major inputs,
bit for bit. On a CPU the Triton kernels run in the interpreter (the engine's GPU run is in
test_gpu_engine)."""

from __future__ import annotations

import pytest
import torch

from core.fragment_order import FragmentOrder, padded_rows, to_fragment_order
from core.layers.linear import Linear
from plugins.awq.format import AWQLinearMethod
from tests.awq_checkpoint import write_awq_checkpoint
from tests.conftest import write_llama_checkpoint
from tests.plugins.awq.test_awq_kernels import interpreted as interpreted_gemv
from tests.plugins.awq.test_awq_kernels import mma_launches, mma_problem, needs_cuda
from tests.plugins.awq.test_awq_partial_sums import PROMPTS, SIZES, interpreted, runner
from tests.plugins.models.internlm.test_model_vs_llama import run_prefill_logits


def _fragment_order_x_gives_the_same_bits(device: str, m: int, awq_weight) -> None:
    """x written in fragment order (core/fragment_order.py) feeds the same values to the same
    sums: y bit for bit as from row-major x. Its padding rows hold NaN: they reach no output."""
    from plugins.awq.mma_gemv import awq_mma_gemv

    weights, x = mma_problem(awq_weight, m, seed=700 + m, device=device)
    padded = torch.full((padded_rows(m), x.shape[1]), float("nan"), device=device).half()
    padded[:m] = x
    xf = FragmentOrder(to_fragment_order(padded).buf, m)
    for split_k, kw in mma_launches():
        y = awq_mma_gemv(x, *weights, 128, **kw)
        assert torch.equal(awq_mma_gemv(xf, *weights, 128, **kw), y), kw
        p = awq_mma_gemv(xf, *weights, 128, partial=True, **kw)
        assert torch.equal(p if split_k == 1 else p.total(), y), kw


@interpreted_gemv
@pytest.mark.parametrize("m", [1, 9, 16, 27])
def test_mma_gemv_reads_fragment_order_x(m, awq_weight):
    _fragment_order_x_gives_the_same_bits("cpu", m, awq_weight)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("m", [1, 8, 9, 16, 17, 32])
def test_mma_gemv_reads_fragment_order_x_on_the_gpu(m, awq_weight):
    _fragment_order_x_gives_the_same_bits("cuda", m, awq_weight)


def _fragment_inputs(r) -> list[str]:
    """Names of the projections whose next forward gets a FragmentOrder input."""
    seen: list[str] = []
    for name, module in r.model.named_modules():
        if isinstance(module, Linear):
            module.register_forward_pre_hook(
                lambda m, args, name=name: (
                    seen.append(name.rsplit(".", 1)[-1])
                    if isinstance(args[0], FragmentOrder)
                    else None
                )
            )
    return seen


@interpreted
def test_decode_batches_hand_fragment_order_to_the_gemv_with_the_same_logits(tmp_path, monkeypatch):
    write_llama_checkpoint(tmp_path / "hf", bias=False, **SIZES)
    awq = write_awq_checkpoint(tmp_path / "hf", tmp_path / "awq", 128)
    r = runner(awq, "consumer")
    seen = _fragment_inputs(r)
    got = run_prefill_logits(r, PROMPTS)  # 13 tokens: the tensor-core GEMV's batch sizes
    # both layers: qkv_proj and gate_up_proj after the norms, down_proj after SiLU x mul
    assert sorted(seen) == sorted(["qkv_proj", "gate_up_proj", "down_proj"] * 2)
    seen.clear()
    run_prefill_logits(r, [[5, 6, 7]])  # below FRAGMENT_MIN_M rows: row-major
    assert seen == []
    long = [list(range(3, 43))]  # 40 tokens: past the tensor-core GEMV, row-major as before
    got_long = run_prefill_logits(r, long)
    assert seen == []
    monkeypatch.setattr(AWQLinearMethod, "wants_fragment_order", lambda self, layer, m: False)
    plain = runner(awq, "consumer")
    seen = _fragment_inputs(plain)
    want = run_prefill_logits(plain, PROMPTS)
    assert seen == []
    for g, w in zip(got, want):
        assert not g.isnan().any()
        assert torch.equal(g, w)
    assert torch.equal(got_long[0], run_prefill_logits(plain, long)[0])
