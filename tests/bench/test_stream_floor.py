"""bench/stream_floor.py's kernels read every byte they are timed for (Triton's interpreter on
CPU; on a GPU the compiled kernels): the floor is only a floor if no load is skipped."""

from __future__ import annotations

import numpy as np
import torch

from bench.stream_floor import _flat_kernel, _rows_kernel

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _random_int32(shape, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**31), 2**31 - 1, shape, generator=gen, dtype=torch.int32)


def test_the_row_walk_xors_every_int32_of_each_row():
    n, k = 24, 512  # 24 rows of 64 int32: 4 chunks, walked 2 at a time, 8 rows per program
    q = _random_int32((n, k // 8), seed=0)
    out = torch.zeros(n, dtype=torch.int32)
    qd, od = q.to(DEVICE), out.to(DEVICE)
    _rows_kernel[(n // 8,)](qd, od, k // 8, BLOCK_N=8, UNROLL=2, num_warps=1)
    expected = np.bitwise_xor.reduce(q.numpy(), axis=1)
    assert (od.cpu().numpy() == expected).all()


def test_the_flat_read_xors_each_programs_whole_range():
    programs, per, block = 6, 256, 64
    q = _random_int32((programs * per,), seed=1)
    out = torch.zeros(programs, dtype=torch.int32)
    qd, od = q.to(DEVICE), out.to(DEVICE)
    _flat_kernel[(programs,)](qd, od, per, BLOCK=block, num_warps=1)
    expected = np.bitwise_xor.reduce(q.numpy().reshape(programs, per), axis=1)
    assert (od.cpu().numpy() == expected).all()
