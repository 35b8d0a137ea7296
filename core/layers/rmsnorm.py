"""RMSNorm, optionally fused with the residual add."""

from __future__ import annotations

import torch
from torch import nn

from core.fragment_order import FragmentOrder, can_write_fragment_order
from core.kernels import KernelTable
from core.partial_sums import PartialSums, for_op


class RMSNorm(nn.Module):
    def __init__(
        self, hidden_size: int, eps: float, kernels: KernelTable, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)
        self._norm = kernels.get("rms_norm")
        self._add_norm = kernels.get("add_rms_norm")

    def forward(
        self,
        x: torch.Tensor | PartialSums,
        residual: torch.Tensor | None = None,
        fragment: bool = False,
    ) -> torch.Tensor | FragmentOrder | tuple[torch.Tensor | FragmentOrder, torch.Tensor]:
        # x may be a GEMM's split-K partial sums: the op adds them, or gets their total.
        # fragment: the next layer's GEMV reads fragment order (core/fragment_order.py); an op
        # that cannot write it returns row-major output, which the GEMV reads as well
        op = self._norm if residual is None else self._add_norm
        kw = {"fragment": True} if fragment and can_write_fragment_order(op) else {}
        if residual is None:
            return op(for_op(op, x), self.weight, self.eps, **kw)
        return op(for_op(op, x), residual, self.weight, self.eps, **kw)
