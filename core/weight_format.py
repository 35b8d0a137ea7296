"""The weight-format contract: how a linear layer creates, loads, repacks and applies weights.

A format (dense fp16, AWQ int4, ...) is registered through ``register_weight_formats``. The
model builds every linear layer through ``LinearMethod`` (vLLM's contract):

1. ``create_weights`` adds parameters in the *checkpoint* layout to the layer. Each parameter
   carries ``output_dim`` (the dimension that indexes output features, or None) and
   ``output_pack`` (how many output features one element of that dimension holds, e.g. 8 for
   int4 packed into int32), so fused layers (qkv, gate_up) can be filled shard by shard from
   separate checkpoint tensors, and tensor parallelism can split them. ``input_dim`` and
   ``input_pack`` say the same of input features (e.g. AWQ scales [K/G, N]: input_dim 0, one
   element per G inputs), so row-parallel layers can split them by input.
2. ``process_weights_after_loading`` turns them into the kernel's layout (in place, may rename).
3. ``apply`` computes ``x @ W^T + b`` with the resolved kernel.

A workspace stores the state after step 2; loading one builds the layer, runs step 2 on the
meta device (no data), then reads the tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def set_weight_attrs(
    param: torch.Tensor,
    output_dim: int | None,
    output_pack: int = 1,
    input_dim: int | None = None,
    input_pack: int = 1,
) -> None:
    param.output_dim = output_dim  # type: ignore[attr-defined]
    param.output_pack = output_pack  # type: ignore[attr-defined]
    param.input_dim = input_dim  # type: ignore[attr-defined]
    param.input_pack = input_pack  # type: ignore[attr-defined]


WEIGHT_ATTRS = ("output_dim", "output_pack", "input_dim", "input_pack")


class LinearMethod:
    """How one weight format stores and applies linear layers. Subclass per format.

    ``output_block`` / ``input_block``: a tensor-parallel shard's outputs (column-parallel) or
    inputs (row-parallel) must be a multiple of these, so packed elements, quantization groups
    and kernel tiles are never cut (both layouts, checkpoint and repacked, must split there).
    """

    output_block: int = 1
    input_block: int = 1
    # apply() takes ``partial=True`` and may then return core.partial_sums.PartialSums: split-K
    # partial sums the next op adds (kernels.split_k_sum=consumer); Linear only asks such methods
    partial_sums: bool = False

    def create_weights(
        self,
        layer: nn.Module,
        input_size: int,
        output_sizes: list[int],
        params_dtype: torch.dtype,
    ) -> None:
        raise NotImplementedError

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Repack loaded checkpoint tensors into the kernel layout (default: nothing to do)."""

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def wants_fragment_order(self, layer: nn.Module, m: int) -> bool:
        """Whether apply() on ``m`` rows would rather get x as core.fragment_order.FragmentOrder
        (the op before it then writes that order); a method that says so takes either."""
        return False


@dataclass(frozen=True)
class CheckpointInfo:
    """What a format may look at to recognise a checkpoint."""

    hf_config: dict[str, Any]
    tensor_shapes: dict[str, tuple[int, ...]]  # checkpoint tensor name -> shape
    extra_configs: dict[str, dict[str, Any]]  # e.g. {"quant_config.json": {...}}


class WeightFormat:
    """A named weight format. ``detect`` recognises checkpoints; ``linear_method`` builds one."""

    name: str = ""

    def detect(self, info: CheckpointInfo) -> dict[str, Any] | None:
        """Return the format's parameters (e.g. {"group_size": 128}) if ``info`` is in this
        format, else None. Used by ``quant=auto``."""
        return None

    def linear_method(self, params: dict[str, Any], kernels: Any) -> LinearMethod:
        """Build the LinearMethod; ``kernels`` is a ``core.kernels.KernelTable``."""
        raise NotImplementedError

    def skip_checkpoint_tensor(self, name: str) -> bool:
        """True for checkpoint tensors the model need not load (e.g. rotary inv_freq)."""
        return False
