"""Triton SiLU x mul on the fused gate_up output (core/ops/reference.py is the oracle)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.ops.pdl import pdl_launch
from core.ops.triton_pdl import pdl_start

# elements of the output row per program: 13824 (internlm-chat-20b) -> 7 programs per token
BLOCK = 2048


@triton.jit
def _silu_mul_kernel(
    x_ptr, out_ptr, stride_x, stride_out, inter, BLOCK: tl.constexpr, USE_PDL: tl.constexpr
):
    pdl_start(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + inter + offs, mask=mask, other=0.0).to(tl.float32)
    g = gate.to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * up
    tl.store(out_ptr + row * stride_out + offs, y.to(gate.dtype), mask=mask)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    # x [T, 2I] (gate | up) -> [T, I] (x's dtype); silu and product in fp32
    assert x.dim() == 2 and x.shape[1] % 2 == 0 and x.stride(-1) == 1, (
        f"x: expected [T, 2I] with unit last stride, got {tuple(x.shape)}"
    )
    t, inter = x.shape[0], x.shape[1] // 2
    out = torch.empty((t, inter), dtype=x.dtype, device=x.device)
    if t:
        block = min(BLOCK, triton.next_power_of_2(inter))
        _silu_mul_kernel[(t, triton.cdiv(inter, block))](
            x, out, x.stride(0), out.stride(0), inter,
            BLOCK=block, **pdl_launch(x), num_warps=4,
        )  # fmt: skip
    return out
