"""Packing and round-to-nearest quantization in the AutoAWQ GEMM layout."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.awq.layout import pack_natural, repack_qweight, repack_qzeros
from plugins.awq.quantize import pack_awq, quantize_awq
from plugins.awq.reference import (
    dequantize_awq,
    dequantize_kernel,
    unpack_awq,
    unpack_kernel_weight,
    unpack_natural,
)


def _as_int32(u: int) -> int:
    return u - (1 << 32) if u >= 1 << 31 else u


def test_pack_awq_hand_example():
    # values 0..7: slot i holds value [0, 2, 4, 6, 1, 3, 5, 7][i], nibble i counted from the low end
    values = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15]])
    packed = pack_awq(values)
    assert packed.dtype == torch.int32
    assert packed.tolist() == [[0x75316420], [_as_int32(0xFDB9ECA8)]]
    assert torch.equal(unpack_awq(packed), values.int())


def test_kernel_layout_hand_example():
    # Within a 128-wide K chunk, int32 column c holds k = j * 16 + c in nibble slot j.
    q = (torch.arange(128) % 16).view(1, 128)  # q[0, k] = k % 16
    awq = pack_awq(q.t().repeat(1, 8))  # checkpoint layout [K=128, N/8=1], all 8 outputs equal
    kernel = repack_qweight(awq)  # (N=8, 16)
    assert kernel.shape == (8, 16)
    # column c holds k = c, 16 + c, ..., 112 + c: all have k % 16 == c, so every nibble is c
    expected = [_as_int32(int(f"{c:x}" * 8, 16)) for c in range(16)]
    assert kernel[0].tolist() == expected
    assert torch.equal(unpack_kernel_weight(kernel)[0], q[0].int())


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), cols8=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_roundtrip(rows, cols8, seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 16, (rows, cols8 * 8), generator=gen, dtype=torch.int32)
    assert torch.equal(unpack_awq(pack_awq(values)), values)
    assert torch.equal(unpack_natural(pack_natural(values)), values)


@settings(max_examples=10, deadline=None)
@given(chunks=st.integers(1, 3), n8=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_repack_keeps_every_value(chunks, n8, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (chunks * 128, n8 * 8), generator=gen, dtype=torch.int32)  # (K, N)
    assert torch.equal(unpack_kernel_weight(repack_qweight(pack_awq(q))), q.t())
    z = torch.randint(0, 16, (chunks, n8 * 8), generator=gen, dtype=torch.int32)
    assert torch.equal(unpack_natural(repack_qzeros(pack_awq(z))), z)


def test_quantize_error_within_half_a_step():
    for group_size in (32, 64, 128):
        w = torch.randn(48, 256) * torch.rand(48, 1)  # rows of different ranges
        w[0] = w[0].abs() + 0.1  # an all-positive row: the range must still include 0
        qweight, qzeros, scales = quantize_awq(w, group_size)
        assert qweight.shape == (256, 6) and qzeros.shape == (256 // group_size, 6)
        assert scales.shape == (256 // group_size, 48) and scales.dtype == torch.float16
        deq = dequantize_awq(qweight, qzeros, scales, group_size)  # (K, N)
        step = scales.float().repeat_interleave(group_size, dim=0)
        err = (deq - w.t()).abs()
        assert (err <= step / 2 * (1 + 1e-4) + 1e-7).all(), err.max()


def test_dequantize_matches_between_layouts():
    w = torch.randn(64, 256)
    qweight, qzeros, scales = quantize_awq(w, 64)
    ckpt = dequantize_awq(qweight, qzeros, scales, 64)  # (K, N)
    kern = dequantize_kernel(repack_qweight(qweight), scales, repack_qzeros(qzeros), 64)  # (N, K)
    assert torch.equal(kern, ckpt.t())
