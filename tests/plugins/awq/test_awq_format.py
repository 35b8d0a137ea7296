"""AWQ checkpoint detection and plugin registration."""

from __future__ import annotations

import pluggy
import pytest

from core import hookspecs
from core.kernels import KernelTable
from core.plugins import collect
from core.weight_format import CheckpointInfo
from plugins.awq import plugin
from plugins.awq.format import AWQConfigError, AWQFormat, AWQLinearMethod
from plugins.awq.reference import awq_gemm_torch


def _info(hf_config=None, shapes=None, extra=None) -> CheckpointInfo:
    return CheckpointInfo(
        hf_config=hf_config or {}, tensor_shapes=shapes or {}, extra_configs=extra or {}
    )


def _awq_shapes(in_features: int, out_features: int, group_size: int, prefix: str) -> dict:
    groups = in_features // group_size
    return {
        f"{prefix}.qweight": (in_features, out_features // 8),
        f"{prefix}.qzeros": (groups, out_features // 8),
        f"{prefix}.scales": (groups, out_features),
    }


EXPECTED_128 = {"group_size": 128, "bits": 4, "zero_point": True}


def test_detects_autoawq_quantization_config():
    quant = {
        "quant_method": "awq",
        "version": "gemm",
        "bits": 4,
        "group_size": 128,
        "zero_point": True,
    }
    assert AWQFormat().detect(_info({"quantization_config": quant})) == EXPECTED_128


def test_detects_autoawq_quant_config_json():
    extra = {
        "quant_config.json": {"w_bit": 4, "q_group_size": 64, "zero_point": True, "version": "GEMM"}
    }
    assert AWQFormat().detect(_info(extra=extra)) == {
        "group_size": 64,
        "bits": 4,
        "zero_point": True,
    }


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_detects_lmdeploy_layout_from_tensor_shapes(group_size):
    shapes = {"model.embed_tokens.weight": (103168, 5120)}
    shapes |= _awq_shapes(5120, 5120, group_size, "model.layers.0.self_attn.q_proj")
    shapes |= _awq_shapes(13824, 5120, group_size, "model.layers.0.mlp.down_proj")
    params = AWQFormat().detect(_info({"architectures": ["InternLMForCausalLM"]}, shapes))
    assert params == {"group_size": group_size, "bits": 4, "zero_point": True}


def test_dense_and_other_quant_methods_are_not_awq():
    dense = {"model.layers.0.self_attn.q_proj.weight": (5120, 5120)}
    assert AWQFormat().detect(_info({}, dense)) is None
    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    assert AWQFormat().detect(_info({"quantization_config": gptq})) is None


@pytest.mark.parametrize(
    ("quant", "message"),
    [
        ({"version": "gemv"}, "version 'gemv'"),
        ({"bits": 8}, "bits=8"),
        ({"zero_point": False}, "zero_point=False"),
        ({"group_size": 256}, "group size 256"),
    ],
)
def test_unsupported_autoawq_configs_fail_clearly(quant, message):
    base = {
        "quant_method": "awq",
        "version": "gemm",
        "bits": 4,
        "group_size": 128,
        "zero_point": True,
    }
    with pytest.raises(AWQConfigError, match=message):
        AWQFormat().detect(_info({"quantization_config": base | quant}))


def test_unsupported_group_size_from_tensors_names_the_tensor():
    shapes = _awq_shapes(5120, 5120, 256, "model.layers.0.self_attn.o_proj")
    with pytest.raises(AWQConfigError, match=r"o_proj\.qzeros.*group size 256"):
        AWQFormat().detect(_info({}, shapes))


def test_gemv_tensor_layout_is_rejected():
    shapes = {  # AutoAWQ GEMV packs along in: qweight [out, in/8]
        "l.qweight": (5120, 640),
        "l.qzeros": (5120, 40),
        "l.scales": (5120, 40),
    }
    with pytest.raises(AWQConfigError, match="GEMM layout"):
        AWQFormat().detect(_info({}, shapes))


def test_plugin_registers_format_and_both_kernels():
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(plugin, name="plugins.awq.plugin")
    pm.check_pending()
    regs = collect(pm)
    assert regs.weight_formats.names() == ["awq"]
    assert regs.kernels.names() == ["awq_gemm:torch", "awq_gemm:triton"]
    assert regs.kernels.get("awq_gemm:torch") is awq_gemm_torch
    fmt = regs.weight_formats.get("awq")
    method = fmt.linear_method({"group_size": 64}, KernelTable(regs.kernels, "torch", "cpu"))
    assert isinstance(method, AWQLinearMethod)
    assert method.group_size == 64 and method.gemm is awq_gemm_torch
    table = KernelTable(regs.kernels, "triton", "cpu")
    assert fmt.linear_method({"group_size": 128}, table).gemm is plugin.awq_gemm_triton
    with pytest.raises(AWQConfigError, match="group size 96"):
        fmt.linear_method({"group_size": 96}, table)
