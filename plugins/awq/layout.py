"""The kernel layout of AWQ int4 weights, and the repack from the checkpoint layout.

Checkpoint (AutoAWQ GEMM): ``qweight`` int32 [K, N/8] packed along N in AWQ order, ``qzeros``
int32 [K/G, N/8] likewise, ``scales`` fp16 [K/G, N].

Kernel (what plugins/awq/kernels.py and reference.py read):

- ``qweight`` int32 [N, K/8]: each output row's K values are contiguous, so a program that owns
  a few rows reads fully coalesced memory however narrow its block (decode splits N finely to
  fill the SMs without split-K). K is cut into chunks of 128; within a chunk, int32 column
  c (0..15) holds in nibble slot j the value at k = chunk * 128 + j * 16 + c. Then
  ``(q >> 4p) & 0x000F000F`` puts two whole 16-wide K-slices (slots p and p + 4) into the two
  fp16 halves of an int32 at once, each slice is contiguous in x and lies in one quantization
  group (G in 32, 64, 128), so it takes a single scale per row.
- ``qzeros`` int32 [K/G, N/8] with value j in nibble slot j (natural order along N).
- ``scales`` fp16 [K/G, N], unchanged (contiguous along N, as the kernel reads them).

Every function here is plain tensor arithmetic without data-dependent control flow, so it runs
on the meta device (a workspace load computes the final shapes that way) as well as CPU/CUDA.
"""

from __future__ import annotations

import torch

from plugins.awq.reference import KCHUNK, PIECE, unpack_awq


def pack_natural(values: torch.Tensor) -> torch.Tensor:
    """int [R, C] values in 0..15 -> int32 [R, C/8] with value j of each eight in slot j."""
    rows, cols = values.shape
    v = values.to(torch.int32).view(rows, cols // 8, 8)  # (R, C/8, 8)
    packed = v[..., 0]
    for j in range(1, 8):
        packed = packed | (v[..., j] << (4 * j))  # bit 31 may be set: int32 wraps, as intended
    return packed.contiguous()


def repack_qweight(qweight: torch.Tensor) -> torch.Tensor:
    """Checkpoint qweight int32 [K, N/8] (AWQ order) -> kernel qweight int32 [N, K/8]."""
    k = qweight.shape[0]
    if k % KCHUNK != 0:
        raise ValueError(
            f"AWQ qweight {tuple(qweight.shape)}: input size {k} is not a multiple of {KCHUNK}, "
            f"which the int4 kernel layout needs; use a model whose in_features divide by {KCHUNK}"
        )
    q = unpack_awq(qweight).t()  # (N, K)
    n = q.shape[0]
    q = q.reshape(n, k // KCHUNK, 8, PIECE).transpose(2, 3)  # (N, chunk, c, j)
    return pack_natural(q.reshape(n, k))  # (N, K/8)


def repack_qzeros(qzeros: torch.Tensor) -> torch.Tensor:
    """Checkpoint qzeros int32 [K/G, N/8] (AWQ order) -> int32 [K/G, N/8] in natural order."""
    return pack_natural(unpack_awq(qzeros))
