"""How close a Triton op must come to its torch reference (core/ops/reference.py).

A module of its own, not conftest.py: tests/plugins/awq has a conftest too, and a test that
imported ``conftest`` got whichever directory's pytest put first on sys.path.
"""

from __future__ import annotations

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12)).item()


def tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 2e-3
