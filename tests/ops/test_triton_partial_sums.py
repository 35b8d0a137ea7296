"""The ops that read a GEMM's output, given its split-K partial sums (core/partial_sums.py):
each adds them as it loads its input and gives the bits it gives for their total."""

from __future__ import annotations

import pytest
import torch

from core.partial_sums import PartialSums


def partials(shape: tuple[int, ...], splits: int, dtype: torch.dtype, device: str) -> PartialSums:
    """Random fp32 partial sums whose total is an ordinary activation (x3 spread, some -0.0)."""
    parts = 3 * torch.randn(splits, *shape, device=device) / splits
    parts.view(-1)[::97] = -0.0  # 0.0 + -0.0 must give +0.0, as the GEMM's own sum does
    return PartialSums(parts, dtype)


@pytest.mark.parametrize("splits", [2, 9])
def test_add_rms_norm_adds_the_partial_sums_it_reads(target, splits):
    from core.ops.triton_norm import add_rms_norm

    device, dtype = target
    x = partials((5, 100), splits, dtype, device)
    residual = torch.randn(5, 100, device=device).to(dtype)
    weight = (1 + 0.1 * torch.randn(100, device=device)).to(dtype)
    normed, summed = add_rms_norm(x, residual, weight, 1e-6)
    want_normed, want_summed = add_rms_norm(x.total(), residual, weight, 1e-6)
    assert torch.equal(summed, want_summed) and torch.equal(normed, want_normed)


def test_rms_norm_adds_the_partial_sums_it_reads(target):
    from core.ops.triton_norm import rms_norm

    device, dtype = target
    x = partials((3, 64), 3, dtype, device)
    weight = (1 + 0.1 * torch.randn(64, device=device)).to(dtype)
    assert torch.equal(rms_norm(x, weight, 1e-6), rms_norm(x.total(), weight, 1e-6))


@pytest.mark.parametrize("splits", [2, 4])
def test_silu_mul_adds_the_partial_sums_it_reads(target, splits):
    from core.ops.triton_activation import silu_mul

    device, dtype = target
    x = partials((3, 600), splits, dtype, device)
    out = silu_mul(x)
    assert out.dtype == dtype and torch.equal(out, silu_mul(x.total()))


@pytest.mark.parametrize("splits, heads, kv_heads", [(2, 4, 2), (4, 20, 10)])
def test_rotary_store_kv_adds_the_partial_sums_of_q_k_v(target, splits, heads, kv_heads):
    """q, k, v as the model slices them out of one qkv GEMM's partial sums (split, view); 20
    heads take several programs per token (blocks of 8, the last one partly masked)."""
    from core.ops.triton_rotary import rotary_store_kv

    device, dtype = target
    t, d, num_blocks, block_size = 5, 16, 4, 4
    qkv = partials((t, (heads + 2 * kv_heads) * d), splits, dtype, device)
    sizes = [heads * d, kv_heads * d, kv_heads * d]
    q, k, v = (p.view(t, -1, d) for p in qkv.split(sizes, dim=-1))
    angles = torch.rand(t, d // 2, device=device) * 100
    slots = torch.randperm(num_blocks * block_size)[:t].to(device)
    caches = [torch.zeros(num_blocks, block_size, kv_heads, d, device=device, dtype=dtype)
              for _ in range(4)]  # fmt: skip
    q_out = rotary_store_kv(q, k, v, angles.cos(), angles.sin(), *caches[:2], slots)
    whole = (x.view(t, -1, d) for x in qkv.total().split(sizes, dim=-1))
    want = rotary_store_kv(*whole, angles.cos(), angles.sin(), *caches[2:], slots)
    assert torch.equal(q_out, want)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    # a mix of tensors and partial sums is summed first, to the same result
    mixed = rotary_store_kv(q, k.total(), v, angles.cos(), angles.sin(), *caches[:2], slots)
    assert torch.equal(mixed, want)
