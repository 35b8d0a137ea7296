"""The "hello-int8" weight format: int8 weights, one floating-point scale per output row.

Checkpoints hold ordinary dense weights; the format quantizes them once, after loading
(``process_weights_after_loading``), and dequantizes on the fly in ``apply``. Pick it with
``nybble quant=hello-int8``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from core.weight_format import LinearMethod, WeightFormat, set_weight_attrs


class Int8LinearMethod(LinearMethod):
    def create_weights(self, layer, input_size, output_sizes, params_dtype):
        # the checkpoint layout: the dense weight [out, in], filled shard by shard by the loader
        weight = nn.Parameter(
            torch.empty(sum(output_sizes), input_size, dtype=params_dtype), requires_grad=False
        )
        set_weight_attrs(weight, output_dim=0)
        layer.weight = weight

    def process_weights_after_loading(self, layer):
        w = layer.weight.data  # [out, in]
        scales = w.float().abs().amax(dim=1).clamp(min=1e-8) / 127  # [out]
        qweight = torch.round(w.float() / scales[:, None]).clamp(-127, 127).to(torch.int8)
        del layer.weight
        layer.qweight = nn.Parameter(qweight, requires_grad=False)  # [out, in] int8
        layer.scales = nn.Parameter(scales.to(w.dtype), requires_grad=False)  # [out]
        set_weight_attrs(layer.qweight, output_dim=0)
        set_weight_attrs(layer.scales, output_dim=0)

    def apply(self, layer, x, bias):
        # x [..., in] · qweight [out, in] int8 · scales [out] -> [..., out]
        y = F.linear(x, layer.qweight.to(x.dtype)) * layer.scales.to(x.dtype)
        return y if bias is None else y + bias


class Int8Format(WeightFormat):
    name = "hello-int8"

    def linear_method(self, params, kernels):
        return Int8LinearMethod()
