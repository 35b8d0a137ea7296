"""SwiGLU activation: silu(gate) * up on the fused gate_up output."""

from __future__ import annotations

import torch
from torch import nn

from core.fragment_order import FragmentOrder, can_write_fragment_order
from core.kernels import KernelTable
from core.partial_sums import PartialSums, for_op


class SiluAndMul(nn.Module):
    def __init__(self, kernels: KernelTable) -> None:
        super().__init__()
        self._op = kernels.get("silu_mul")

    def forward(
        self, x: torch.Tensor | PartialSums, fragment: bool = False
    ) -> torch.Tensor | FragmentOrder:
        # x [T, 2I] (or a GEMM's split-K partial sums of it) -> [T, I]; fragment: as RMSNorm's
        kw = {"fragment": True} if fragment and can_write_fragment_order(self._op) else {}
        return self._op(for_op(self._op, x), **kw)
