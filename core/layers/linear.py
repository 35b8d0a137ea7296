"""Linear layers whose weights belong to a weight format (core.weight_format.LinearMethod)."""

from __future__ import annotations

import torch
from torch import nn

from core.fragment_order import FragmentOrder
from core.partial_sums import PartialSums
from core.weight_format import LinearMethod, set_weight_attrs


class WeightShapeError(ValueError):
    """A checkpoint tensor does not fit the parameter it is loaded into."""


class Linear(nn.Module):
    """``y = x @ W^T + b`` with W stored by a weight format.

    ``output_sizes`` lists the fused outputs (one entry for a plain layer; q, k, v sizes for a
    fused qkv; gate, up for gate_up). ``load_shard`` fills one of them from a checkpoint tensor.

    ``partial_output``: the model sets it where the op reading this layer's output adds split-K
    partial sums itself (core/partial_sums.py); then forward may return ``PartialSums``.
    """

    partial_output = False

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        bias: bool,
        linear_method: LinearMethod,
        params_dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_sizes = list(output_sizes)
        self.output_size = sum(output_sizes)
        self.linear_method = linear_method
        linear_method.create_weights(self, input_size, self.output_sizes, params_dtype)
        if bias:
            self.bias = nn.Parameter(
                torch.empty(self.output_size, dtype=params_dtype), requires_grad=False
            )
            set_weight_attrs(self.bias, output_dim=0)
        else:
            self.register_parameter("bias", None)

    def load_shard(
        self, param_name: str, loaded: torch.Tensor, shard: int | None, source: str
    ) -> None:
        """Copy checkpoint tensor ``loaded`` (named ``source``) into output shard ``shard``."""
        param = getattr(self, param_name)
        dim = getattr(param, "output_dim", None)
        pack = getattr(param, "output_pack", 1)
        target = param.data
        if shard is not None and dim is not None:
            offset = sum(self.output_sizes[:shard]) // pack
            target = target.narrow(dim, offset, self.output_sizes[shard] // pack)
        if tuple(target.shape) != tuple(loaded.shape):
            raise WeightShapeError(
                f"{source}: checkpoint shape {tuple(loaded.shape)} does not match the expected "
                f"{tuple(target.shape)} (parameter {param_name} of a layer with input "
                f"{self.input_size}, outputs {self.output_sizes}); is the model config "
                "(hidden_size, intermediate_size, heads) or the quantization group size right?"
            )
        if target.dtype.is_floating_point != loaded.dtype.is_floating_point:
            raise WeightShapeError(
                f"{source}: checkpoint dtype {loaded.dtype} cannot fill parameter {param_name} "
                f"of dtype {target.dtype}; is the weight format (quant=) right?"
            )
        target.copy_(loaded.to(target.dtype) if loaded.dtype.is_floating_point else loaded)

    def forward(self, x: torch.Tensor | FragmentOrder) -> torch.Tensor | PartialSums:
        return self._product(x, self.bias)

    def wants_fragment_order(self, m: int) -> bool:
        """Whether the op producing this layer's ``m``-row input should write it in fragment
        order (core/fragment_order.py): the weight format's GEMV reads it faster."""
        return self.linear_method.wants_fragment_order(self, m)

    def _product(
        self, x: torch.Tensor, bias: torch.Tensor | None, may_defer: bool = True
    ) -> torch.Tensor | PartialSums:
        method = self.linear_method
        if may_defer and self.partial_output and method.partial_sums:
            return method.apply(self, x, bias, partial=True)
        return method.apply(self, x, bias)

    def extra_repr(self) -> str:
        return f"in={self.input_size}, out={self.output_sizes}, bias={self.bias is not None}"
