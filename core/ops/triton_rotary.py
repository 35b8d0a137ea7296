"""Triton rotate-half RoPE (core/ops/reference.py is the oracle).

cos/sin come from the layer (fp32, one row per token, dynamic NTK already applied), so the kernel
is a pure gather-rotate-store. Grid (T, 2): program (t, 0) rotates token t's query heads, (t, 1)
its key heads. q/k may be strided views of the fused qkv output; the results are new
contiguous tensors, as the reference returns.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.ops.pdl import pdl_launch
from core.ops.triton_pdl import pdl_start


@triton.jit
def _rotate_heads(x_ptr, out_ptr, c, s, t, stride_xt, stride_xh, num_heads, half,
                  BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):  # fmt: skip
    heads = tl.arange(0, BLOCK_H)[:, None]  # (BH, 1)
    offs = tl.arange(0, BLOCK_HALF)[None, :]  # (1, BD/2)
    mask = (heads < num_heads) & (offs < half)
    src = x_ptr + t * stride_xt + heads * stride_xh + offs
    x1 = tl.load(src, mask=mask, other=0.0)
    x2 = tl.load(src + half, mask=mask, other=0.0)
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    dst = out_ptr + t * num_heads * 2 * half + heads * 2 * half + offs
    tl.store(dst, (x1f * c - x2f * s).to(x1.dtype), mask=mask)
    tl.store(dst + half, (x2f * c + x1f * s).to(x1.dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_ct,
    num_heads, num_kv_heads, half,
    BLOCK_H: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr,
    USE_PDL: tl.constexpr,
):  # fmt: skip
    pdl_start(USE_PDL)
    t = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_HALF)
    c = tl.load(cos_ptr + t * stride_ct + offs, mask=offs < half, other=0.0)[None, :]
    s = tl.load(sin_ptr + t * stride_ct + offs, mask=offs < half, other=0.0)[None, :]
    if tl.program_id(1) == 0:
        _rotate_heads(q_ptr, q_out_ptr, c, s, t, stride_qt, stride_qh, num_heads, half,
                      BLOCK_H, BLOCK_HALF)  # fmt: skip
    else:
        _rotate_heads(k_ptr, k_out_ptr, c, s, t, stride_kt, stride_kh, num_kv_heads, half,
                      BLOCK_HK, BLOCK_HALF)  # fmt: skip


def rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # q [T, H, D] · k [T, Hk, D] (strided views ok) · cos/sin [T, D/2] fp32 -> q [T, H, D], k [T, Hk, D]
    t, h, d = q.shape
    assert k.dim() == 3 and k.shape[0] == t and k.shape[2] == d, (
        f"k: expected [{t}, Hk, {d}], got {tuple(k.shape)}"
    )
    assert d % 2 == 0 and q.stride(-1) == 1 and k.stride(-1) == 1, (
        "q/k: even head_dim, unit last stride"
    )
    assert cos.shape == (t, d // 2) and sin.shape == cos.shape, (
        f"cos/sin: expected ({t}, {d // 2}), got {tuple(cos.shape)}"
    )
    assert cos.dtype == torch.float32 and sin.dtype == torch.float32, "cos/sin: expected fp32"
    assert cos.stride() == sin.stride() and cos.stride(-1) == 1, (
        "cos/sin: same strides, unit last stride"
    )
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if t:
        _rotary_kernel[(t, 2)](
            q, k, cos, sin, q_out, k_out,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0),
            h, k.shape[1], d // 2,
            BLOCK_H=triton.next_power_of_2(h), BLOCK_HK=triton.next_power_of_2(k.shape[1]),
            BLOCK_HALF=triton.next_power_of_2(d // 2), **pdl_launch(q), num_warps=4,
        )  # fmt: skip
    return q_out, k_out
