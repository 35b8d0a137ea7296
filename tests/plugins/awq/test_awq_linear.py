"""AWQ linear layers through core's Linear: shard loading, repack, apply, meta device."""

from __future__ import annotations

import os

import pytest
import torch

from core.layers.linear import Linear, WeightShapeError
from plugins.awq.format import AWQConfigError, AWQLinearMethod
from plugins.awq.plugin import awq_gemm_triton
from plugins.awq.quantize import quantize_awq
from plugins.awq.reference import awq_gemm_torch, dequantize_awq

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # set by conftest.py without CUDA

HIDDEN = 256
SIZES = [64, 32, 32]  # q, k, v: uneven so a wrong shard offset shows
PREFIX = "model.layers.0.self_attn"


def _fused_qkv(group_size: int, gemm, bias: bool, device: str = "cpu") -> Linear:
    with torch.device(device):
        return Linear(HIDDEN, SIZES, bias, AWQLinearMethod(group_size, gemm=gemm), torch.float16)


def _load_qkv(layer: Linear, group_size: int, seed: int = 0) -> torch.Tensor:
    """Fill a fused qkv from three separately quantized tensors; return dense W [K, N]."""
    gen = torch.Generator().manual_seed(seed)
    dense = []
    for shard, (name, size) in enumerate(zip("qkv", SIZES, strict=True)):
        w = torch.randn(size, HIDDEN, generator=gen) * 0.05
        qweight, qzeros, scales = quantize_awq(w, group_size)
        for pname, tensor in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales)):
            layer.load_shard(pname, tensor, shard, f"{PREFIX}.{name}_proj.{pname}")
        dense.append(dequantize_awq(qweight, qzeros, scales, group_size))  # (K, size)
    return torch.cat(dense, dim=1)  # (K, N)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_qkv_matches_dense_dequantized(group_size, bias):
    layer = _fused_qkv(group_size, awq_gemm_torch, bias)
    w = _load_qkv(layer, group_size)
    if bias:
        layer.bias.data.copy_(torch.randn(sum(SIZES)))
    layer.linear_method.process_weights_after_loading(layer)
    x = torch.randn(2, 5, HIDDEN)
    y = layer(x)
    expected = x @ w + (layer.bias.float() if bias else 0)
    assert y.shape == (2, 5, sum(SIZES)) and y.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(
    not INTERPRETED, reason="Triton interpreter on CPU tensors (TRITON_INTERPRET=1)"
)
def test_fused_qkv_through_triton_interpreter():
    layer = _fused_qkv(64, awq_gemm_triton, bias=False)
    w = _load_qkv(layer, 64, seed=1)
    layer.linear_method.process_weights_after_loading(layer)
    x = torch.randn(3, HIDDEN).half()
    y = layer(x)
    assert y.dtype == torch.float16
    ref = x.float() @ w
    assert ((y.float() - ref).norm() / ref.norm()) < 2e-3


def test_mismatched_shard_names_tensor_and_both_shapes():
    layer = _fused_qkv(64, awq_gemm_torch, bias=False)
    wrong = torch.zeros(HIDDEN, 16, dtype=torch.int32)  # k_proj packed as if it had 128 outputs
    source = f"{PREFIX}.k_proj.qweight"
    with pytest.raises(WeightShapeError) as err:
        layer.load_shard("qweight", wrong, 1, source)
    assert (
        source in str(err.value) and "(256, 16)" in str(err.value) and "(256, 4)" in str(err.value)
    )


def test_create_weights_rejects_bad_sizes():
    with pytest.raises(AWQConfigError, match="input size 200"):
        Linear(200, [64], False, AWQLinearMethod(64, gemm=awq_gemm_torch), torch.float16)
    with pytest.raises(AWQConfigError, match=r"output 1 has size 12"):
        Linear(256, [64, 12], False, AWQLinearMethod(64, gemm=awq_gemm_torch), torch.float16)


def test_meta_repack_matches_real_repack():
    real = _fused_qkv(32, awq_gemm_torch, bias=True)
    _load_qkv(real, 32)
    real.linear_method.process_weights_after_loading(real)
    meta = _fused_qkv(32, awq_gemm_torch, bias=True, device="meta")
    meta.linear_method.process_weights_after_loading(meta)
    real_params = dict(real.named_parameters())
    meta_params = dict(meta.named_parameters())
    assert real_params.keys() == meta_params.keys() == {"qweight", "qzeros", "scales", "bias"}
    for name, p in meta_params.items():
        assert p.is_meta and not p.requires_grad
        assert (p.shape, p.dtype) == (real_params[name].shape, real_params[name].dtype), name
        assert p.output_dim == real_params[name].output_dim
    assert real.qweight.shape == (sum(SIZES), HIDDEN // 8)  # kernel layout [N, K/8]


def test_repacking_twice_is_refused():
    layer = _fused_qkv(64, awq_gemm_torch, bias=False, device="meta")
    layer.linear_method.process_weights_after_loading(layer)
    with pytest.raises(RuntimeError, match="already repacked"):
        layer.linear_method.process_weights_after_loading(layer)
