"""core/fragment_order.py: the tensor-core GEMV's x order, its torch reference and its Triton
offset formula agree."""

from __future__ import annotations

import pytest
import torch

from core.fragment_order import FragmentOrder, from_fragment_order, to_fragment_order
from core.ops.triton_fragment_order import fragment_offset


@pytest.mark.parametrize("m, k", [(1, 128), (5, 256), (16, 384), (17, 128), (32, 640)])
def test_round_trip_and_offsets(m, k):
    x = torch.randn(m, k).half()
    f = to_fragment_order(x)
    assert f.buf.shape == ((m + 15) // 16 * 16, k) and f.shape == (m, k)
    assert torch.equal(f.natural(), x)
    assert torch.equal(from_fragment_order(f.buf)[m:], torch.zeros(f.buf.shape[0] - m, k).half())
    # the formula the Triton producers and the GEMV use (plain Python on integer tensors)
    rows = torch.arange(m)[:, None]
    cols = torch.arange(k)[None, :]
    offs = fragment_offset.fn(rows, cols, k)
    assert torch.equal(f.buf.flatten()[offs], x)
    assert offs.unique().numel() == m * k  # one slot per element


def test_a_lane_reads_two_k_tiles_contiguously():
    """Lane (g, t) of half h finds x[8h + g, 16p + 4t + j] for K tiles 2q, 2q + 1 in 8 adjacent
    elements, and the 32 lanes of one (chunk, q, h) fill 256 adjacent elements."""
    k = 256
    offs = fragment_offset.fn(torch.arange(16)[:, None], torch.arange(k)[None, :], k)
    for c in range(2):
        for q in range(4):
            for h in range(2):
                lanes = [
                    offs[8 * h + g, 128 * c + 16 * (2 * q + u) + 4 * t + j]
                    for g in range(8) for t in range(4) for u in range(2) for j in range(4)
                ]  # fmt: skip
                start = int(lanes[0])
                assert [int(o) for o in lanes] == list(range(start, start + 256))


def test_bad_buffers_are_refused():
    with pytest.raises(ValueError, match="expected a contiguous"):
        FragmentOrder(torch.zeros(8, 128).half(), m=9)  # needs 16 rows
    with pytest.raises(ValueError, match="multiple of 128"):
        FragmentOrder(torch.zeros(16, 100).half(), m=3)
