"""Resolves named ops to one backend's implementation, once, when a model is built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from core.registry import Registry

BACKENDS = ("auto", "triton", "torch")
SPLIT_K_SUMS = ("gemm", "consumer")  # kernels.split_k_sum (core/partial_sums.py)


class KernelTable:
    """Picks, per op, the implementation for the configured backend.

    ``auto``: Triton on CUDA devices, torch elsewhere. ``triton``: Triton wherever an op has a
    Triton kernel (on a CPU that needs ``TRITON_INTERPRET=1``), torch for the others. ``torch``:
    the references everywhere. Layers call ``get`` in their constructors and keep the callable,
    so nothing on the hot path touches the registry.

    ``split_k_sum="consumer"``: models let the ops that read a GEMM's output add its split-K
    partial sums (``partial_sums`` is then True; core/partial_sums.py).
    """

    def __init__(
        self,
        registry: Registry,
        backend: str,
        device: torch.device | str,
        split_k_sum: str = "consumer",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"kernels.backend={backend!r}: expected one of {BACKENDS}")
        if split_k_sum not in SPLIT_K_SUMS:
            raise ValueError(f"kernels.split_k_sum={split_k_sum!r}: expected one of {SPLIT_K_SUMS}")
        self.partial_sums = split_k_sum == "consumer"
        device = torch.device(device)
        if backend == "auto":
            backend = "triton" if device.type == "cuda" else "torch"
        self.backend = backend
        self.device = device
        self._registry = registry
        self.chosen: dict[str, str] = {}

    def get(self, op: str) -> Callable[..., Any]:
        if self.backend == "triton" and f"{op}:triton" in self._registry:
            self.chosen[op] = "triton"
            return self._registry.get(f"{op}:triton")
        self.chosen[op] = "torch"
        return self._registry.get(f"{op}:torch")
