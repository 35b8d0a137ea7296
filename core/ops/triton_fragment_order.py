"""The device side of core/fragment_order.py: where a kernel stores (or loads) x[row, col] in a
fragment-order buffer."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fragment_offset(row, col, K):
    """Element offset of x[row, col] in a fragment-order buffer with K columns (any shapes that
    broadcast)."""
    return fragment_base(row, col, K) + col % 4


@triton.jit
def fragment_offset_1d(row, col, K):
    """fragment_offset for one row's 1-D block of columns, in a form Triton stores as vectors:
    columns 4t..4t+3 of a K tile land side by side, and told that their base is one multiple of
    4 (it comes from col // 4), Triton writes a thread's 4 adjacent columns in one 8-byte store
    instead of four 2-byte ones. For the norms and SiLU x mul on an H100, 256/512 tokens, the
    decode step at batch 8 / 16 / 32 went 8.16 -> 8.06, 10.33 -> 10.21, 17.05 -> 16.90 ms
    (bench/results/token_throughput-h100-s16-store-old/-new)."""
    return tl.multiple_of(fragment_base(row, col, K), 4) + col % 4


@triton.jit
def fragment_base(row, col, K):
    """fragment_offset of x[row, col - col % 4] (plain arithmetic: also runs on torch tensors)."""
    b = row // 16
    h = (row // 8) % 2
    g = row % 8
    col4 = col // 4
    c = col4 // 32
    p = (col4 % 32) // 4  # K tile in the chunk
    t = col4 % 4
    return b * 16 * K + c * 2048 + (((p // 2) * 2 + h) * 8 + g) * 32 + t * 8 + (p % 2) * 4
