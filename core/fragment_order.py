"""A decode GEMV input written in the tensor-core GEMV's register order ("fragment order").

The tensor-core GEMV (plugins/awq/mma_gemv.py) gives each lane of a warp the x values of the
mma's B fragment: batch rows g and g + 8, and in each 128-wide K chunk, for K tile p = 0..7,
columns 16 p + 4 t .. 16 p + 4 t + 3 (lane 4 g + t). From a row-major [M, K] x every such load
touches 8 rows, 8 bytes each, and at batch 16 the x loads cost ~21 us of a layer's 95 us
(H200, timed by loading them all from one row: bench/results/gemv-m16-ablation-h200.log). A
producer that knows its output feeds that GEMV can store it in this order instead, so each
warp-wide load reads 512 contiguous bytes: the same bytes in half the requests, 100.3 -> 95.4 us
per layer at batch 16 on an H100 (bench/results/gemv-fragment-order-h100.log).

Layout: ``buf`` is fp16 [ceil(M / 16) * 16, K] in memory (rows past M are never read into an
output: a batch row only feeds its own output column). Element (m, k) with m = 16 b + 8 h + g,
k = 128 c + 16 p + 4 t + j and p = 2 q + u sits at

    b * 16 K + c * 2048 + ((q * 2 + h) * 8 + g) * 32 + t * 8 + u * 4 + j

so for fixed (b, c, q, h) the 32 lanes (g, t) read 16 contiguous bytes each (K tiles 2q, 2q+1).
``FragmentOrder`` travels between the producer and the GEMV, like core/partial_sums.py's; the
kernels' offset formula is core/ops/triton_fragment_order.py's.

It is a hint both ways: a layer asks its op for fragment order only where the next layer's
weight format says its GEMV would read it (``LinearMethod.wants_fragment_order``), and only from
an op marked :func:`writes_fragment_order`; any other op returns row-major x, which the GEMV
reads as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROWS = 16  # batch rows per block: the mma's two n8 tiles
CHUNK = 128  # K per chunk: the GEMV's quantization group


@dataclass(frozen=True)
class FragmentOrder:
    """``buf`` [ceil(M / 16) * 16, K] fp16 holding x [M, K] in fragment order."""

    buf: torch.Tensor
    m: int

    def __post_init__(self) -> None:
        rows, k = self.buf.shape
        if rows != padded_rows(self.m) or k % CHUNK or not self.buf.is_contiguous():
            raise ValueError(
                f"FragmentOrder: expected a contiguous [{padded_rows(self.m)}, K] buffer with K "
                f"a multiple of {CHUNK} for M={self.m}, got {tuple(self.buf.shape)}"
            )

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.m, self.buf.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.buf.dtype

    @property
    def device(self) -> torch.device:
        return self.buf.device

    def dim(self) -> int:
        return 2

    def natural(self) -> torch.Tensor:
        """x [M, K] in row-major order (a copy)."""
        return from_fragment_order(self.buf)[: self.m]


def writes_fragment_order(op):
    """Mark an op implementation that takes ``fragment=True`` and then returns its output as a
    ``FragmentOrder`` (core/layers pass it where the next GEMV reads that order)."""
    op.writes_fragment_order = True
    return op


def can_write_fragment_order(op) -> bool:
    return getattr(op, "writes_fragment_order", False)


def padded_rows(m: int) -> int:
    return -(-m // ROWS) * ROWS


def _dims(rows: int, k: int) -> tuple[int, ...]:
    # row (b, h, g), k (c, q, u, t, j)
    return rows // ROWS, 2, 8, k // CHUNK, 4, 2, 4, 4


# natural [b, h, g, c, q, u, t, j] -> fragment [b, c, q, h, g, t, u, j]
_PERM = (0, 3, 4, 1, 2, 6, 5, 7)
_INVERSE = tuple(_PERM.index(i) for i in range(8))


def to_fragment_order(x: torch.Tensor) -> FragmentOrder:
    """The torch reference: x [M, K] -> FragmentOrder (padding rows are zero)."""
    m, k = x.shape
    buf = torch.zeros((padded_rows(m), k), dtype=x.dtype, device=x.device)
    buf[:m] = x
    out = buf.view(_dims(*buf.shape)).permute(_PERM).contiguous().view(buf.shape)
    return FragmentOrder(out, m)


def from_fragment_order(buf: torch.Tensor) -> torch.Tensor:
    rows, k = buf.shape
    d = _dims(rows, k)
    frag = buf.view(tuple(d[i] for i in _PERM))
    return frag.permute(_INVERSE).contiguous().view(rows, k)
