"""The dense (unquantized fp16/bf16/fp32) weight format."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.weight_format import CheckpointInfo, LinearMethod, WeightFormat, set_weight_attrs


class DenseLinearMethod(LinearMethod):
    """Weight ``[out, in]`` exactly as Hugging Face stores it; ``F.linear`` applies it."""

    def create_weights(
        self, layer: nn.Module, input_size: int, output_sizes: list[int], params_dtype: torch.dtype
    ) -> None:
        weight = nn.Parameter(
            torch.empty(sum(output_sizes), input_size, dtype=params_dtype), requires_grad=False
        )
        set_weight_attrs(weight, output_dim=0, input_dim=1)
        layer.weight = weight

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, layer.weight, bias)


class DenseFormat(WeightFormat):
    name = "none"

    def detect(self, info: CheckpointInfo) -> dict[str, Any] | None:
        if any(n.endswith(".weight") and "proj" in n for n in info.tensor_shapes):
            return {}
        return None

    def linear_method(self, params: dict[str, Any], kernels: Any) -> LinearMethod:
        return DenseLinearMethod()
