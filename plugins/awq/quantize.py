"""Round-to-nearest int4 quantization with a zero point, packed exactly like AutoAWQ's GEMM layout.

Used to build AWQ checkpoints for tests and benchmarks (real AWQ also searches per-channel
activation scales before this step; the packing and the dequantization rule are the same).
"""

from __future__ import annotations

import torch

from plugins.awq.reference import AWQ_PACK_ORDER


def pack_awq(values: torch.Tensor) -> torch.Tensor:
    """int [R, C] values in 0..15 -> int32 [R, C/8], value j of each eight in slot
    ``AWQ_PACK_ORDER.index(j)`` (so slot i holds value ``AWQ_PACK_ORDER[i]``)."""
    rows, cols = values.shape
    if cols % 8 != 0:
        raise ValueError(f"pack_awq: {cols} columns is not a multiple of 8")
    v = values.to(torch.int32).view(rows, cols // 8, 8)  # (R, C/8, 8)
    packed = torch.zeros(rows, cols // 8, dtype=torch.int32, device=values.device)
    for slot, j in enumerate(AWQ_PACK_ORDER):
        packed |= v[..., j] << (4 * slot)  # bit 31 may be set: int32 wraps, as intended
    return packed


def quantize_awq(
    weight: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize an ``nn.Linear`` weight [out, in] to AWQ int4 with a zero point.

    Returns ``(qweight int32 [in, out/8], qzeros int32 [in/G, out/8], scales fp16 [in/G, out])``
    such that ``(q - z) * s`` is within ``s / 2`` of every weight. Each group's range is widened
    to include 0 so the zero point always lies in 0..15.
    """
    out_features, in_features = weight.shape
    if in_features % group_size != 0 or out_features % 8 != 0:
        raise ValueError(
            f"quantize_awq: weight [{out_features}, {in_features}] needs in % group_size "
            f"({group_size}) == 0 and out % 8 == 0"
        )
    w = weight.detach().float().t().reshape(in_features // group_size, group_size, out_features)
    w_max = w.amax(dim=1).clamp(min=0)  # (in/G, out)
    w_min = w.amin(dim=1).clamp(max=0)
    scale = ((w_max - w_min) / 15).clamp(min=1e-5)
    # Round the scale up to fp16 so that 15 steps still cover the range after rounding.
    s16 = scale.half()
    s16 = torch.where(s16.float() < scale, torch.nextafter(s16, torch.full_like(s16, 1e4)), s16)
    s = s16.float()
    zero = torch.round(-w_min / s).clamp(0, 15)  # (in/G, out)
    q = (torch.round(w / s[:, None]) + zero[:, None]).clamp(0, 15)  # (in/G, G, out)
    q = q.reshape(in_features, out_features).to(torch.int32)
    return pack_awq(q), pack_awq(zero.to(torch.int32)), s16
