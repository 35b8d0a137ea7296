"""AWQ test setup.

Triton reads TRITON_INTERPRET when a kernel is decorated (when plugins/awq/kernels.py is
imported), so it is set here, before any test module imports the kernels. On a machine without
CUDA the kernels then run in Triton's interpreter on CPU tensors; on a GPU machine it stays
unset, the interpreter tests skip and the @pytest.mark.gpu tests run the compiled kernels.
"""

from __future__ import annotations

import os

import pytest
import torch

from plugins.awq.layout import repack_qweight, repack_qzeros
from plugins.awq.quantize import quantize_awq

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def make_awq_weight(n: int, k: int, group_size: int, seed: int = 0, device: str = "cpu"):
    """Random dense W [N, K] and its AWQ kernel-layout tensors (qweight, scales, qzeros)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    qweight, qzeros, scales = quantize_awq(w, group_size)
    return (
        w,
        repack_qweight(qweight).to(device),
        scales.to(device),
        repack_qzeros(qzeros).to(device),
    )


@pytest.fixture
def awq_weight():
    return make_awq_weight
