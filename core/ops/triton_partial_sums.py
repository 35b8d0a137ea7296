"""The device side of core/partial_sums.py: an op's kernel loading an input that may be split-K
partial sums (added here, as the GEMM that produced them would have)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.partial_sums import PartialSums


def input_args(x: torch.Tensor | PartialSums) -> tuple[torch.Tensor, int, int]:
    """(tensor to pass as the input pointer, SPLITS, split stride) for :func:`load_input`."""
    if isinstance(x, PartialSums):
        return x.parts, x.splits, x.split_stride
    return x, 0, 0


@triton.jit
def load_input(ptrs, mask, split_stride, SPLITS: tl.constexpr, DTYPE: tl.constexpr):
    """The input at ``ptrs``: as stored (SPLITS 0), or SPLITS fp32 partial sums ``split_stride``
    elements apart added in split order from 0.0 and rounded to DTYPE: the bits the GEMM's own
    reduction (plugins/awq/split_k.py) would have stored."""
    if SPLITS == 0:
        return tl.load(ptrs, mask=mask, other=0.0)
    acc = 0.0 + tl.load(ptrs, mask=mask, other=0.0)  # 0.0 + -0.0 is +0.0, as in the GEMM
    for s in tl.static_range(1, SPLITS):
        acc += tl.load(ptrs + s * split_stride, mask=mask, other=0.0)
    return acc.to(DTYPE)
