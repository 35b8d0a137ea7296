"""The device side of core/fragment_order.py: where a kernel stores (or loads) x[row, col] in a
fragment-order buffer."""

from __future__ import annotations

import triton
import triton.language as tl  # noqa: F401  (the interpreter looks it up from @triton.jit code)


@triton.jit
def fragment_offset(row, col, K):
    """Element offset of x[row, col] in a fragment-order buffer with K columns (any shapes that
    broadcast)."""
    b = row // 16
    h = (row // 8) % 2
    g = row % 8
    c = col // 128
    r = col % 128
    p = r // 16
    t = (r % 16) // 4
    j = r % 4
    return b * 16 * K + c * 2048 + (((p // 2) * 2 + h) * 8 + g) * 32 + t * 8 + (p % 2) * 4 + j
