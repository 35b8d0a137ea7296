"""Triton rms_norm, add_rms_norm, rotary, silu_mul and store_kv against the torch references."""

from __future__ import annotations

import pytest
import torch
from op_tolerance import rel_err, tolerance

from core.ops import reference


@pytest.mark.parametrize("t, hidden", [(1, 48), (5, 100), (3, 256)])
def test_rms_norm(target, t, hidden):
    from core.ops.triton_norm import rms_norm

    device, dtype = target
    wide = torch.randn(t, hidden + 7, device=device).to(dtype)
    x = wide[:, :hidden]  # a strided row view: the kernel must honour the row stride
    weight = (1 + 0.1 * torch.randn(hidden, device=device)).to(dtype)
    out = rms_norm(x, weight, 1e-6)
    ref = reference.rms_norm(x, weight, 1e-6)
    assert out.shape == ref.shape and out.dtype == dtype
    assert not out.isnan().any()
    assert rel_err(out, ref) < tolerance(dtype)


@pytest.mark.parametrize("t, hidden", [(1, 48), (6, 100)])
def test_add_rms_norm(target, t, hidden):
    from core.ops.triton_norm import add_rms_norm

    device, dtype = target
    x = torch.randn(t, hidden, device=device).to(dtype)
    residual = (4 * torch.randn(t, hidden, device=device)).to(dtype)
    weight = (1 + 0.1 * torch.randn(hidden, device=device)).to(dtype)
    normed, summed = add_rms_norm(x, residual, weight, 1e-5)
    ref_normed, ref_summed = reference.add_rms_norm(x, residual, weight, 1e-5)
    assert torch.equal(summed, ref_summed)  # one rounding of the same fp32 sum
    assert not normed.isnan().any()
    assert rel_err(normed, ref_normed) < tolerance(dtype)


@pytest.mark.parametrize(
    "t, heads, kv_heads, head_dim", [(1, 4, 4, 16), (7, 6, 2, 32), (3, 5, 1, 24)]
)
def test_rotary(target, t, heads, kv_heads, head_dim):
    from core.ops.triton_rotary import rotary

    device, dtype = target
    q_size, kv_size = heads * head_dim, kv_heads * head_dim
    qkv = torch.randn(t, q_size + 2 * kv_size, device=device).to(dtype)
    q, k, _ = qkv.split([q_size, kv_size, kv_size], dim=-1)  # strided views, as the model has
    q = q.view(t, heads, head_dim)
    k = k.view(t, kv_heads, head_dim)
    angles = torch.rand(t, head_dim // 2, device=device) * 100
    cos, sin = angles.cos(), angles.sin()
    before = qkv.clone()
    q_out, k_out = rotary(q, k, cos, sin)
    q_ref, k_ref = reference.rotary(q, k, cos, sin)
    assert q_out.shape == q.shape and k_out.shape == k.shape
    assert rel_err(q_out, q_ref) < tolerance(dtype)
    assert rel_err(k_out, k_ref) < tolerance(dtype)
    assert torch.equal(qkv, before)  # inputs untouched


@pytest.mark.parametrize("head_major", [False, True])
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(4, 4, 16), (6, 2, 24)])
def test_rotary_store_kv(target, heads, kv_heads, head_dim, head_major):
    """One launch = rotary, then store_kv: the same rotated q and the same cache contents, padded
    rows (slot -1) write nothing, the fused qkv input stays untouched."""
    from core.ops.triton_rotary import rotary_store_kv

    device, dtype = target
    t, num_blocks, block_size = 7, 4, 4
    q_size, kv_size = heads * head_dim, kv_heads * head_dim
    qkv = torch.randn(t, q_size + 2 * kv_size, device=device).to(dtype)
    q, k, v = (x.view(t, -1, head_dim) for x in qkv.split([q_size, kv_size, kv_size], dim=-1))
    angles = torch.rand(t, head_dim // 2, device=device) * 100
    cos, sin = angles.cos(), angles.sin()
    slots = torch.randperm(num_blocks * block_size)[:t]
    slots[[2, 5]] = -1
    slots = slots.to(device)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_ref, v_ref = (torch.randn(shape, device=device).to(dtype) for _ in range(2))
    k_cache, v_cache = k_ref.clone(), v_ref.clone()
    if head_major:  # the same values stored [NB, Hk, BS, D], viewed as [NB, BS, Hk, D]
        k_cache, v_cache = (c.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
                            for c in (k_cache, v_cache))  # fmt: skip
    before = qkv.clone()
    q_out = rotary_store_kv(q, k, v, cos, sin, k_cache, v_cache, slots)
    q_ref = reference.rotary_store_kv(q, k, v, cos, sin, k_ref, v_ref, slots)
    assert q_out.shape == q.shape and rel_err(q_out, q_ref) < tolerance(dtype)
    assert rel_err(k_cache, k_ref) < tolerance(dtype)
    assert torch.equal(v_cache, v_ref)  # values are copied, not computed
    assert torch.equal(qkv, before)


@pytest.mark.parametrize("t, inter", [(1, 40), (4, 300), (2, 2500)])
def test_silu_mul(target, t, inter):
    from core.ops.triton_activation import silu_mul

    device, dtype = target
    x = (3 * torch.randn(t, 2 * inter, device=device)).to(dtype)
    out = silu_mul(x)
    ref = reference.silu_mul(x)
    assert out.shape == (t, inter) and out.dtype == dtype
    assert rel_err(out, ref) < tolerance(dtype)


@pytest.mark.parametrize("head_major", [False, True])
@pytest.mark.parametrize("block_size, kv_heads, head_dim", [(4, 2, 16), (16, 3, 24)])
def test_store_kv(target, block_size, kv_heads, head_dim, head_major):
    from core.ops.triton_kv_cache import store_kv

    device, dtype = target
    num_blocks, t = 5, 9
    slots = torch.randperm(num_blocks * block_size)[:t]
    slots[[1, 4]] = -1  # padded rows of a graph batch: no write
    slots = slots.to(device)
    kv = torch.randn(t, 3 * kv_heads, head_dim, device=device).to(dtype)
    k, v = kv[:, :kv_heads], kv[:, kv_heads : 2 * kv_heads]  # strided views
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, device=device).to(dtype)
    v_cache = torch.randn(shape, device=device).to(dtype)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    if head_major:  # the same values stored [NB, Hk, BS, D], viewed as [NB, BS, Hk, D]
        k_cache, v_cache = (c.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
                            for c in (k_cache, v_cache))  # fmt: skip
    store_kv(k, v, k_cache, v_cache, slots)
    reference.store_kv(k, v, k_ref, v_ref, slots)
    assert torch.equal(k_cache, k_ref)
    assert torch.equal(v_cache, v_ref)
    written = slots[slots >= 0].cpu()
    assert torch.equal(k_ref.view(-1, kv_heads, head_dim)[written].to(device), k[slots >= 0])


@pytest.mark.parametrize("t", [1, 5, 16, 17])
def test_norms_and_silu_mul_write_fragment_order(target, t):
    """fragment=True: the same values, stored where the tensor-core GEMV reads them
    (core/fragment_order.py); the residual stream stays row-major."""
    from core.fragment_order import FragmentOrder, padded_rows
    from core.ops.triton_activation import silu_mul
    from core.ops.triton_norm import add_rms_norm, rms_norm

    device, dtype = target
    hidden = 256
    x = torch.randn(t, hidden, device=device).to(dtype)
    residual = torch.randn(t, hidden, device=device).to(dtype)
    weight = (1 + 0.1 * torch.randn(hidden, device=device)).to(dtype)
    f = rms_norm(x, weight, 1e-6, fragment=True)
    assert isinstance(f, FragmentOrder) and f.buf.shape == (padded_rows(t), hidden)
    assert torch.equal(f.natural(), rms_norm(x, weight, 1e-6))
    f, summed = add_rms_norm(x, residual, weight, 1e-6, fragment=True)
    want, want_summed = add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(f.natural(), want) and torch.equal(summed, want_summed)
    gate_up = (3 * torch.randn(t, 2 * hidden, device=device)).to(dtype)
    f = silu_mul(gate_up, fragment=True)
    assert f.shape == (t, hidden) and torch.equal(f.natural(), silu_mul(gate_up))
