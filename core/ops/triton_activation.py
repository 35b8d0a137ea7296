"""Triton SiLU x mul on the fused gate_up output (core/ops/reference.py is the oracle)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.fragment_order import FragmentOrder, padded_rows
from core.ops.pdl import pdl_launch
from core.ops.triton_fragment_order import fragment_offset_1d
from core.ops.triton_partial_sums import input_args, load_input
from core.ops.triton_pdl import pdl_start
from core.partial_sums import PartialSums

# elements of the output row per program: 13824 (internlm-chat-20b) -> 7 programs per token
BLOCK = 2048


@triton.jit
def _silu_mul_kernel(
    x_ptr, out_ptr, stride_x, stride_out, stride_split, inter,
    BLOCK: tl.constexpr, USE_PDL: tl.constexpr, SPLITS: tl.constexpr = 0,
    FRAG: tl.constexpr = False,
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
    # FRAG: the output in the tensor-core GEMV's fragment order (core/fragment_order.py)
    dst = out_ptr + (fragment_offset_1d(row, offs, inter) if FRAG else row * stride_out + offs)
    tl.store(dst, y.to(dtype), mask=mask)


def silu_mul(x: torch.Tensor | PartialSums, fragment: bool = False) -> torch.Tensor | FragmentOrder:
    # x [T, 2I] (gate | up) -> [T, I] (x's dtype); silu and product in fp32. x may be a GEMM's
    # split-K partial sums (core/partial_sums.py), added here as they are read. fragment: the
    # output written for the tensor-core GEMV (core/fragment_order.py), I % 128 == 0
    assert x.dim() == 2 and x.shape[1] % 2 == 0 and x.stride(-1) == 1, (
        f"x: expected [T, 2I] with unit last stride, got {tuple(x.shape)}"
    )
    t, inter = x.shape[0], x.shape[1] // 2
    assert not fragment or inter % 128 == 0, f"fragment order needs I % 128 == 0, got {inter}"
    rows = padded_rows(t) if fragment else t
    out = torch.empty((rows, inter), dtype=x.dtype, device=x.device)
    if t:
        block = min(BLOCK, triton.next_power_of_2(inter))
        src, splits, split_stride = input_args(x)
        _silu_mul_kernel[(t, triton.cdiv(inter, block))](
            src, out, x.stride(0), out.stride(0), split_stride, inter,
            BLOCK=block, **pdl_launch(out), num_warps=4, SPLITS=splits, FRAG=fragment,
        )  # fmt: skip
    return FragmentOrder(out, t) if fragment else out
