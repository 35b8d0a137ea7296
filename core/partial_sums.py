"""A GEMM output whose split-K partial sums are not added yet: the op that reads it adds them.

A decode GEMM with split-K has several programs sum shares of K for the same outputs. Adding
their partials inside the GEMM costs each launch either a chain of dependent memory round trips
at its very end (the tensor-core GEMV, plugins/awq/mma_gemv.py: store the partials, count the
arrival, the last program reads every partial back and writes y) or a zeroed y (a memset launch)
and fp16 atomics (the CUDA-core GEMV and the tl.dot paths of batches 17-64), and the next kernel
waits for all of it. With ``kernels.split_k_sum=consumer`` the GEMM stores its fp32 partials and
exits; the next op (the fused residual add + RMSNorm, SiLU x mul, the rotary + KV write) adds
them while it reads its input, which it loads anyway. ``PartialSums`` is what travels between.

The sum is the one the tensor-core GEMV would have written: the partials added in split order
in fp32 from 0.0, rounded once to ``dtype``. So there a consumer's kernel gives the same bits
either way, and :meth:`PartialSums.total` (what every other consumer calls, see :func:`total`)
gives them too; where the GEMM used fp16 atomics, the sum is now deterministic and rounded once.

``split`` and ``view`` act on the product's own dimensions (the split dimension stays first), as
a model does to a fused qkv output: ``qkv.split([q, kv, kv], dim=-1)``, ``q.view(-1, H, D)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PartialSums:
    """``parts`` fp32 [S, *shape]: split s's share of the product; the product is their sum."""

    parts: torch.Tensor
    dtype: torch.dtype

    def __post_init__(self) -> None:
        if self.parts.dtype != torch.float32 or self.parts.dim() < 2:
            raise ValueError(
                f"PartialSums: expected fp32 partials [splits, ...], got {self.parts.dtype} "
                f"{tuple(self.parts.shape)}"
            )

    @property
    def splits(self) -> int:
        return self.parts.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.parts.shape[1:]

    @property
    def device(self) -> torch.device:
        return self.parts.device

    def dim(self) -> int:
        return self.parts.dim() - 1

    def split(self, sizes: list[int], dim: int = -1) -> tuple[PartialSums, ...]:
        if dim != -1 and dim != self.parts.dim() - 2:
            raise ValueError(f"PartialSums.split: only the last dimension, got dim={dim}")
        return tuple(PartialSums(p, self.dtype) for p in self.parts.split(sizes, dim=-1))

    def view(self, *shape: int) -> PartialSums:
        return PartialSums(self.parts.view(self.splits, *shape), self.dtype)

    def stride(self, dim: int) -> int:
        """The stride of the product's dimension ``dim`` in the partials (as Tensor.stride)."""
        return self.parts.stride(dim if dim < 0 else dim + 1)

    @property
    def split_stride(self) -> int:
        return self.parts.stride(0)

    def total(self) -> torch.Tensor:
        """The product in ``dtype``: the partials added in split order from 0.0, rounded once."""
        acc = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        for part in self.parts:
            acc += part
        return acc.to(self.dtype)


def total(x: torch.Tensor | PartialSums) -> torch.Tensor:
    """``x`` as a tensor: what an op that cannot add partial sums itself calls on its input."""
    return x.total() if isinstance(x, PartialSums) else x


def adds_partial_sums(op):
    """Mark an op implementation that takes ``PartialSums`` for its activation inputs."""
    op.adds_partial_sums = True
    return op


def for_op(op, x: torch.Tensor | PartialSums) -> torch.Tensor | PartialSums:
    """``x`` as ``op`` should get it: partial sums only where the op adds them itself (marked
    with :func:`adds_partial_sums`); any other implementation, a plugin's say, gets a tensor."""
    if isinstance(x, PartialSums) and not getattr(op, "adds_partial_sums", False):
        return x.total()
    return x
