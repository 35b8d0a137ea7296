"""The AWQ int4 weight format: checkpoint detection and the linear method."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from core.fragment_order import FragmentOrder
from core.partial_sums import PartialSums
from core.weight_format import CheckpointInfo, LinearMethod, WeightFormat, set_weight_attrs
from plugins.awq.layout import repack_qweight, repack_qzeros
from plugins.awq.reference import KCHUNK

SUPPORTED_GROUP_SIZES = (32, 64, 128)
PACK = 8  # int4 values per int32


class AWQConfigError(ValueError):
    """An AWQ checkpoint this format cannot serve (wrong version, bits, group size...)."""


def _check_group_size(group_size: Any, where: str) -> int:
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise AWQConfigError(
            f"{where}: AWQ group size {group_size!r} is not supported; "
            f"nybble's int4 kernels take group sizes {SUPPORTED_GROUP_SIZES}"
        )
    return int(group_size)


def _params_from_quant_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    version = str(cfg.get("version", "gemm")).lower()
    bits = cfg.get("bits", cfg.get("w_bit"))
    zero_point = cfg.get("zero_point", True)
    group_size = cfg.get("group_size", cfg.get("q_group_size"))
    if version != "gemm":
        raise AWQConfigError(
            f"{where}: AWQ version {version!r} is not supported; only the 'gemm' packing "
            "(qweight [in, out/8]) is; re-export the checkpoint with AutoAWQ version='GEMM'"
        )
    if bits != 4:
        raise AWQConfigError(f"{where}: AWQ bits={bits!r}; nybble serves 4-bit AWQ only")
    if zero_point is not True:
        raise AWQConfigError(
            f"{where}: AWQ zero_point={zero_point!r}; nybble's kernels need zero points "
            "(quantize with zero_point=True)"
        )
    return {"group_size": _check_group_size(group_size, where), "bits": 4, "zero_point": True}


def _params_from_tensors(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any] | None:
    """lmdeploy ``lite auto_awq`` layout: AWQ tensors but no quantization config."""
    prefixes = [name[: -len(".qweight")] for name in shapes if name.endswith(".qweight")]
    group_sizes: dict[int, str] = {}
    for prefix in prefixes:
        qweight = shapes[prefix + ".qweight"]
        qzeros = shapes.get(prefix + ".qzeros")
        scales = shapes.get(prefix + ".scales")
        if qzeros is None or scales is None:
            raise AWQConfigError(
                f"{prefix}.qweight has no matching .qzeros/.scales; an AWQ checkpoint needs all three"
            )
        in_features, out_packed = qweight
        if scales[1] != out_packed * PACK or qzeros[1] != out_packed:
            raise AWQConfigError(
                f"{prefix}: qweight {qweight}, qzeros {qzeros}, scales {scales} are not the AWQ "
                "GEMM layout (qweight [in, out/8], qzeros [in/G, out/8], scales [in/G, out])"
            )
        if in_features % qzeros[0] != 0:
            raise AWQConfigError(
                f"{prefix}: qweight {qweight} and qzeros {qzeros} give no whole group size"
            )
        group_sizes.setdefault(in_features // qzeros[0], prefix)
    if not group_sizes:
        return None
    if len(group_sizes) > 1:
        found = ", ".join(f"{g} ({p})" for g, p in group_sizes.items())
        raise AWQConfigError(f"AWQ tensors disagree on the group size: {found}")
    ((group_size, prefix),) = group_sizes.items()
    _check_group_size(group_size, f"{prefix}.qzeros")
    return {"group_size": group_size, "bits": 4, "zero_point": True}


class AWQFormat(WeightFormat):
    """AWQ int4 with zero points (AutoAWQ GEMM packing, lmdeploy ``lite auto_awq``)."""

    name = "awq"

    def detect(self, info: CheckpointInfo) -> dict[str, Any] | None:
        quant = info.hf_config.get("quantization_config")
        if isinstance(quant, dict) and quant.get("quant_method") is not None:
            if str(quant["quant_method"]).lower() != "awq":
                return None  # another quantization method: not ours
            return _params_from_quant_config(quant, "config.json quantization_config")
        if "quant_config.json" in info.extra_configs:
            return _params_from_quant_config(
                info.extra_configs["quant_config.json"], "quant_config.json"
            )
        return _params_from_tensors(info.tensor_shapes)

    def linear_method(self, params: dict[str, Any], kernels: Any) -> LinearMethod:
        group_size = _check_group_size(params.get("group_size"), "quant.group_size")
        return AWQLinearMethod(group_size, gemm=kernels.get("awq_gemm"))


class AWQLinearMethod(LinearMethod):
    """Creates checkpoint-layout AWQ parameters, repacks them for the kernel, applies the GEMM.

    ``gemm(x [M, K], qweight, scales, qzeros, group_size) -> [M, N]`` is resolved once, here.
    """

    # tensor-parallel shards: whole int32s of outputs; inputs in whole groups and whole K chunks
    # of the kernel layout (KCHUNK is a multiple of every supported group size)
    output_block = PACK
    partial_sums = True  # apply(..., partial=True) may return PartialSums

    def __init__(self, group_size: int, gemm: Callable[..., torch.Tensor]) -> None:
        self.group_size = _check_group_size(group_size, "AWQLinearMethod")
        self.gemm = gemm
        self.input_block = math.lcm(self.group_size, KCHUNK)

    def wants_fragment_order(self, layer: nn.Module, m: int) -> bool:
        # the Triton GEMM says where its tensor-core GEMV would run (plugins/awq/plugin.py)
        takes = getattr(self.gemm, "takes_fragment_order", None)
        n, k = layer.qweight.shape[0], layer.input_size
        if takes is None or not layer.awq_repacked:
            return False
        return takes(m, n, k, self.group_size, layer.qweight.device)

    def create_weights(
        self,
        layer: nn.Module,
        input_size: int,
        output_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        g = self.group_size
        if input_size % g != 0:
            raise AWQConfigError(
                f"AWQ linear: input size {input_size} is not a multiple of the group size {g}; "
                "check the model config or quant.group_size"
            )
        for i, size in enumerate(output_sizes):
            if size % PACK != 0:
                raise AWQConfigError(
                    f"AWQ linear: output {i} has size {size} (outputs {output_sizes}), not a "
                    f"multiple of {PACK}; int4 packs {PACK} outputs per int32"
                )
        n = sum(output_sizes)

        def param(shape: tuple[int, int], dtype: torch.dtype, pack: int, in_pack: int):
            p = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
            set_weight_attrs(p, output_dim=1, output_pack=pack, input_dim=0, input_pack=in_pack)
            return p

        layer.qweight = param((input_size, n // PACK), torch.int32, PACK, 1)
        layer.qzeros = param((input_size // g, n // PACK), torch.int32, PACK, g)
        layer.scales = param((input_size // g, n), torch.float16, 1, g)
        layer.awq_repacked = False

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if layer.awq_repacked:
            raise RuntimeError(
                "AWQ linear: weights already repacked; repacking twice corrupts them"
            )
        qweight = repack_qweight(layer.qweight.data)  # (N, K/8)
        qzeros = repack_qzeros(layer.qzeros.data)  # (K/G, N/8)
        scales = layer.scales.data.contiguous()  # (K/G, N)
        g = self.group_size
        layer.qweight = nn.Parameter(qweight, requires_grad=False)
        # K/8 int32 columns; a K range on KCHUNK boundaries is a contiguous column range
        set_weight_attrs(layer.qweight, output_dim=0, input_dim=1, input_pack=PACK)
        layer.qzeros = nn.Parameter(qzeros, requires_grad=False)
        set_weight_attrs(layer.qzeros, output_dim=1, output_pack=PACK, input_dim=0, input_pack=g)
        layer.scales = nn.Parameter(scales, requires_grad=False)
        set_weight_attrs(layer.scales, output_dim=1, input_dim=0, input_pack=g)
        layer.awq_repacked = True

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None, partial: bool = False
    ) -> torch.Tensor | PartialSums:
        lead = x.shape[:-1]
        x2 = x if isinstance(x, FragmentOrder) else x.reshape(-1, x.shape[-1])
        args = (x2, layer.qweight, layer.scales, layer.qzeros)
        # split-K partial sums left for the next op to add, where the caller asked and the kernel
        # split K (core/partial_sums.py); with a bias, the GEMM adds them
        kw = {"partial": True} if partial and bias is None else {}
        out = self.gemm(*args, self.group_size, **kw)
        out = out.view(*lead, out.shape[-1])  # (..., N)
        return out if bias is None else out + bias
