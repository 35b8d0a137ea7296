"""RMSNorm, optionally fused with the residual add."""

from __future__ import annotations

import torch
from torch import nn

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
        self, x: torch.Tensor | PartialSums, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # x may be a GEMM's split-K partial sums: the op adds them, or gets their total
        if residual is None:
            return self._norm(for_op(self._norm, x), self.weight, self.eps)
        return self._add_norm(for_op(self._add_norm, x), residual, self.weight, self.eps)
