"""Triton SiLU x mul on the fused gate_up output (core/ops/reference.py is the oracle)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.ops.pdl import pdl_launch
from core.ops.triton_partial_sums import input_args, load_input
from core.ops.triton_pdl import pdl_start
from core.partial_sums import PartialSums

# elements of the output row per program: 13824 (internlm-chat-20b) -> 7 programs per token
BLOCK = 2048


@triton.jit
def _silu_mul_kernel(
    x_ptr, out_ptr, stride_x, stride_out, stride_split, inter,
    BLOCK: tl.constexpr, USE_PDL: tl.constexpr, SPLITS: tl.constexpr = 0,
):  # fmt: skip
    pdl_start(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    # x, or with SPLITS > 0 the GEMM's split-K partial sums of it (core/partial_sums.py)
    dtype = out_ptr.dtype.element_ty
    xp = x_ptr + row * stride_x + offs
    gate = load_input(xp, mask, stride_split, SPLITS, dtype)
    up = load_input(xp + inter, mask, stride_split, SPLITS, dtype).to(tl.float32)
    g = gate.to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * up
    tl.store(out_ptr + row * stride_out + offs, y.to(dtype), mask=mask)


def silu_mul(x: torch.Tensor | PartialSums) -> torch.Tensor:
    # x [T, 2I] (gate | up) -> [T, I] (x's dtype); silu and product in fp32. x may be a GEMM's
    # split-K partial sums (core/partial_sums.py), added here as they are read
    assert x.dim() == 2 and x.shape[1] % 2 == 0 and x.stride(-1) == 1, (
        f"x: expected [T, 2I] with unit last stride, got {tuple(x.shape)}"
    )
    t, inter = x.shape[0], x.shape[1] // 2
    out = torch.empty((t, inter), dtype=x.dtype, device=x.device)
    if t:
        block = min(BLOCK, triton.next_power_of_2(inter))
        src, splits, split_stride = input_args(x)
        _silu_mul_kernel[(t, triton.cdiv(inter, block))](
            src, out, x.stride(0), out.stride(0), split_stride, inter,
            BLOCK=block, **pdl_launch(out), num_warps=4, SPLITS=splits,
        )  # fmt: skip
    return out
