"""core/partial_sums.py: what a GEMM's unadded split-K partial sums look like to a model."""

from __future__ import annotations

import pytest
import torch

from core.partial_sums import PartialSums, adds_partial_sums, for_op, total


def test_total_adds_the_splits_in_order_from_zero_and_rounds_once():
    parts = torch.tensor([[[1.0, -0.0, 2049.0]], [[2.0**-30, -0.0, 1.0]]])
    p = PartialSums(parts, torch.float16)
    assert p.splits == 2 and p.shape == (1, 3) and p.dim() == 2
    want = ((0.0 + parts[0]) + parts[1]).to(torch.float16)
    got = p.total()
    assert got.dtype == torch.float16 and torch.equal(got, want)
    assert not got[0, 1].signbit()  # 0.0 + -0.0 + -0.0 is +0.0, as the GEMM's own sum
    assert got[0, 2].item() == 2050.0  # 2050 in fp32, one rounding to fp16 (exact here)


def test_split_and_view_act_on_the_product_dimensions_like_a_tensor():
    parts = torch.randn(3, 4, 2 * 6 + 6)
    p = PartialSums(parts, torch.float32)
    q, k, v = p.split([12, 3, 3], dim=-1)
    assert q.shape == (4, 12) and k.shape == (4, 3)
    q = q.view(-1, 2, 6)
    assert q.shape == (4, 2, 6) and q.stride(0) == 18 and q.stride(-1) == 1
    assert q.split_stride == 4 * 18
    tq, _, _ = p.total().split([12, 3, 3], dim=-1)
    assert torch.equal(q.total(), tq.reshape(4, 2, 6))
    with pytest.raises(ValueError, match="only the last dimension"):
        p.split([2, 2], dim=0)


def test_partial_sums_must_be_fp32_with_a_split_dimension():
    with pytest.raises(ValueError, match=r"expected fp32 partials \[splits, \.\.\.\]"):
        PartialSums(torch.zeros(2, 3, dtype=torch.float16), torch.float16)
    with pytest.raises(ValueError, match="expected fp32"):
        PartialSums(torch.zeros(3), torch.float16)


def test_only_marked_ops_get_partial_sums():
    p = PartialSums(torch.ones(2, 1, 4), torch.float32)

    def plain(x):
        return x

    @adds_partial_sums
    def adds(x):
        return x

    assert for_op(adds, p) is p
    assert torch.equal(for_op(plain, p), torch.full((1, 4), 2.0))
    t = torch.ones(3)
    assert for_op(plain, t) is t and for_op(adds, t) is t and total(t) is t
