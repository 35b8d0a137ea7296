"""Triton RMSNorm and fused residual add + RMSNorm (core/ops/reference.py is the oracle).

One program per token row: the row (5120 fp16 for internlm-chat-20b) fits in registers, so each
element is read once and written once; the sum of squares is taken in fp32.
"""

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


@triton.jit
def _rms_norm_kernel(
    x_ptr, r_ptr, w_ptr, out_ptr, sum_ptr,
    stride_x, stride_r, stride_out, stride_sum, stride_split,
    N, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr,
    SPLITS: tl.constexpr = 0, FRAG: tl.constexpr = False,
):  # fmt: skip
    pdl_start(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    # x, or with SPLITS > 0 the GEMM's split-K partial sums of it (core/partial_sums.py)
    x = load_input(x_ptr + row * stride_x + offs, mask, stride_split, SPLITS,
                   out_ptr.dtype.element_ty)  # fmt: skip
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + row * stride_r + offs, mask=mask, other=0.0)
        # round the sum to the activation dtype first: the stream the next layer adds to
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(sum_ptr + row * stride_sum + offs, x, mask=mask)
    xf = x.to(tl.float32)
    inv_rms = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / N + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # FRAG: the output in the tensor-core GEMV's fragment order (core/fragment_order.py)
    dst = out_ptr + (fragment_offset_1d(row, offs, N) if FRAG else row * stride_out + offs)
    tl.store(dst, (xf * inv_rms * w).to(x.dtype), mask=mask)


def _check(x: torch.Tensor | PartialSums, weight: torch.Tensor) -> None:
    assert x.dim() == 2 and x.stride(-1) == 1, (
        f"x: expected [T, H] with unit last stride, got {tuple(x.shape)} {x.stride()}"
    )
    assert weight.shape == (x.shape[1],) and weight.is_contiguous(), (
        f"weight: expected ({x.shape[1]},), got {tuple(weight.shape)}"
    )


def _launch(x, residual, weight, out, summed, eps, frag: bool = False) -> None:
    n = x.shape[1]
    block = triton.next_power_of_2(n)
    num_warps = min(max(block // 512, 1), 16)
    src, splits, split_stride = input_args(x)
    r = residual if residual is not None else out
    s = summed if summed is not None else out
    _rms_norm_kernel[(x.shape[0],)](
        src, r, weight, out, s,
        x.stride(0), r.stride(0), out.stride(0), s.stride(0), split_stride,
        n, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, **pdl_launch(out), num_warps=num_warps,
        SPLITS=splits, FRAG=frag,
    )  # fmt: skip


def _output(x, fragment: bool) -> torch.Tensor:
    """The normed output's buffer: [T, H], or [T padded to 16, H] in fragment order."""
    if fragment:
        assert x.shape[1] % 128 == 0, f"fragment order needs H % 128 == 0, got {x.shape[1]}"
    rows = padded_rows(x.shape[0]) if fragment else x.shape[0]
    return torch.empty((rows, x.shape[1]), dtype=x.dtype, device=x.device)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, fragment: bool = False
) -> torch.Tensor | FragmentOrder:
    # x [T, H] fp16/bf16/fp32 · weight [H] -> [T, H] (x's dtype); fp32 statistics.
    # fragment: written for the tensor-core GEMV (core/fragment_order.py), T >= 1
    _check(x, weight)
    out = _output(x, fragment)
    if x.shape[0]:
        _launch(x, None, weight, out, None, eps, fragment)
    return FragmentOrder(out, x.shape[0]) if fragment else out


def add_rms_norm(
    x: torch.Tensor | PartialSums,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    fragment: bool = False,
) -> tuple[torch.Tensor | FragmentOrder, torch.Tensor]:
    # x [T, H] · residual [T, H] · weight [H] -> (rms_norm(x + residual) [T, H], x + residual [T, H])
    # x may be a GEMM's split-K partial sums (core/partial_sums.py), added here as they are read
    _check(x, weight)
    assert residual.shape == x.shape and residual.stride(-1) == 1, (
        f"residual: expected {tuple(x.shape)}, got {tuple(residual.shape)}"
    )
    out = _output(x, fragment)
    summed = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.shape[0]:
        _launch(x, residual, weight, out, summed, eps, fragment)
    return (FragmentOrder(out, x.shape[0]) if fragment else out), summed
