"""Torch reference of AWQ int4: unpacking, dequantization and the GEMM (CPU path and oracle).

Two layouts meet here:

- the *checkpoint* layout (AutoAWQ "GEMM", lmdeploy ``lite auto_awq``): ``qweight`` int32
  [K, N/8], ``qzeros`` int32 [K/G, N/8], ``scales`` fp16 [K/G, N]; value j of a packed int32 sits
  in nibble slot ``AWQ_PACK_ORDER.index(j)``;
- the *kernel* layout (plugins/awq/layout.py) that ``awq_gemm`` reads.
"""

from __future__ import annotations

import torch

# Value j of eight packed along the output dimension sits in nibble slot AWQ_PACK_ORDER.index(j);
# reading slots AWQ_UNPACK_ORDER in turn yields values 0..7 (AutoAWQ's GEMM packing).
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_UNPACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)

# Kernel layout: the K axis is cut into chunks of KCHUNK values; within a chunk, int32 column c
# (0..15) holds in nibble slot j the value at k = chunk * KCHUNK + j * 16 + c (see layout.py).
KCHUNK = 128
PIECE = KCHUNK // 8


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C/8] in AWQ order -> int32 [R, C] values in 0..15."""
    shifts = torch.tensor(
        [4 * s for s in AWQ_UNPACK_ORDER], dtype=torch.int32, device=packed.device
    )
    values = (packed.unsqueeze(-1) >> shifts) & 0xF  # (R, C/8, 8)
    return values.reshape(packed.shape[0], packed.shape[1] * 8)


def unpack_natural(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C/8] with value j in nibble slot j -> int32 [R, C] values in 0..15."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    values = (packed.unsqueeze(-1) >> shifts) & 0xF  # (R, C/8, 8)
    return values.reshape(packed.shape[0], packed.shape[1] * 8)


def dequantize_awq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Checkpoint layout -> fp32 W [K, N] with ``w[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]``."""
    q = unpack_awq(qweight)  # (K, N)
    z = unpack_awq(qzeros).repeat_interleave(group_size, dim=0)  # (K, N)
    s = scales.float().repeat_interleave(group_size, dim=0)  # (K, N)
    return (q - z).float() * s


def unpack_kernel_weight(qweight: torch.Tensor) -> torch.Tensor:
    """Kernel-layout qweight int32 [N, K/8] -> int32 [N, K] values in natural k order."""
    n, k8 = qweight.shape
    values = unpack_natural(qweight)  # (N, K) in stored order: (chunk, c, j)
    values = values.view(n, k8 // PIECE, PIECE, 8)  # (N, chunk, c, j)
    return values.transpose(2, 3).reshape(n, k8 * 8)  # (N, chunk, j, c) = natural k


def dequantize_kernel(
    qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Kernel layout -> fp32 W [N, K] (the ``F.linear`` orientation)."""
    q = unpack_kernel_weight(qweight)  # (N, K)
    z = unpack_natural(qzeros).t().repeat_interleave(group_size, dim=1)  # (N, K)
    s = scales.t().float().repeat_interleave(group_size, dim=1)  # (N, K)
    return (q - z).float() * s


def awq_gemm_torch(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    group_size: int,
    partial: bool = False,
) -> torch.Tensor:
    """``x @ W^T`` with W in the kernel layout; the CPU path and the oracle of the Triton kernel.

    # x [M, K] · qweight [N, K/8] int32 · scales [K/G, N] fp16 · qzeros [K/G, N/8] int32 -> [M, N]

    Computes in fp32 (fp16 matmul on a CPU is slow and imprecise) and returns x's dtype.
    ``partial`` is accepted as the Triton GEMM's is (core/partial_sums.py); there is no split
    here, so the product always comes back summed.
    """
    w = dequantize_kernel(qweight, scales, qzeros, group_size)  # (N, K) fp32
    return (x.float() @ w.t()).to(x.dtype)
