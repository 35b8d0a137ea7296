"""rope_paged_attention: RoPE, the KV write and attention, which a decode step runs in one launch,
against the torch reference (rotary_store_kv, then paged_attention) and the two Triton launches."""

from __future__ import annotations

import pytest
import torch
from op_tolerance import rel_err, tolerance
from test_triton_partial_sums import partials

from core.ops import reference

SEQS = [(1, 1), (5, 1), (63, 1), (65, 1), (131, 1)]


def new_token_slots(meta, block_size: int) -> torch.Tensor:
    """Each sequence's cache slot for its newest token (position context - 1)."""
    pos = meta.context_lens.long() - 1
    blocks = meta.block_tables.long().gather(1, (pos // block_size)[:, None])[:, 0]
    return blocks * block_size + pos % block_size


def decode_step(paged_batch, device, dtype, heads, kv_heads, block_size, d=16):
    """A decode batch whose newest tokens' K/V are not in the cache yet (NaN there, so reading
    the slot before writing it poisons the output), with their q, k, v, cos and sin."""
    b = paged_batch(SEQS, heads, kv_heads, d, block_size, device, dtype)
    meta = b["meta"]
    slots = new_token_slots(meta, block_size)
    meta.slot_mapping = slots
    for cache in (b["k_cache"], b["v_cache"]):
        cache[slots // block_size, slots % block_size] = float("nan")
    t = len(SEQS)
    k = torch.randn(t, kv_heads, d, device=device).to(dtype)
    v = torch.randn(t, kv_heads, d, device=device).to(dtype)
    angles = torch.rand(t, d // 2, device=device) * 100
    return b, k, v, angles.cos(), angles.sin()


@pytest.mark.parametrize("splits", [1, 3, 16])
@pytest.mark.parametrize("heads, kv_heads, block_size", [(4, 2, 4), (3, 3, 16)])
def test_rope_decode_attention_matches_the_reference(
    target, paged_batch, splits, heads, kv_heads, block_size
):
    from core.ops.triton_decode_attention import decode_attention, rope_decode_attention
    from core.ops.triton_rotary import rotary_store_kv

    device, dtype = target
    b, k, v, cos, sin = decode_step(paged_batch, device, dtype, heads, kv_heads, block_size)
    meta, scale = b["meta"], 0.25
    caches = [b["k_cache"].clone(), b["v_cache"].clone()]
    ref = reference.rope_paged_attention(b["q"], k, v, cos, sin, *caches, meta, scale)
    out = rope_decode_attention(b["q"], k, v, cos, sin, b["k_cache"], b["v_cache"],
                                meta.slot_mapping, meta.block_tables, meta.context_lens, scale,
                                splits=splits)  # fmt: skip
    assert not out.isnan().any()  # the new token's slot was written before it was read
    assert rel_err(out, ref) < tolerance(dtype)
    for got, want in zip((b["k_cache"], b["v_cache"]), caches, strict=True):
        torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-3, atol=1e-3)
    # the two Triton launches it replaces write the same cache bits and attend alike
    two = [b["k_cache"].clone().fill_(0), b["v_cache"].clone().fill_(0)]
    q = rotary_store_kv(b["q"], k, v, cos, sin, *two, meta.slot_mapping)
    slots = meta.slot_mapping
    bs = block_size
    for got, want in zip((b["k_cache"], b["v_cache"]), two, strict=True):
        assert torch.equal(got[slots // bs, slots % bs], want[slots // bs, slots % bs])
    unfused = decode_attention(q, b["k_cache"], b["v_cache"], meta.block_tables,
                               meta.context_lens, scale, splits=splits)  # fmt: skip
    assert rel_err(out, unfused) < tolerance(dtype)


def test_rope_decode_attention_skips_padded_rows(target, paged_batch):
    """A row with slot -1 (a padded graph row) writes nothing to the cache."""
    from core.ops.triton_decode_attention import rope_decode_attention

    device, dtype = target
    b, k, v, cos, sin = decode_step(paged_batch, device, dtype, 4, 2, 4)
    meta = b["meta"]
    slots = meta.slot_mapping.clone()
    meta.slot_mapping[2] = -1
    out = rope_decode_attention(b["q"], k, v, cos, sin, b["k_cache"], b["v_cache"],
                                meta.slot_mapping, meta.block_tables, meta.context_lens, 0.25,
                                splits=3)  # fmt: skip
    untouched = b["k_cache"][slots[2] // 4, slots[2] % 4]
    assert untouched.isnan().all() and b["v_cache"][slots[2] // 4, slots[2] % 4].isnan().all()
    live = torch.tensor([i != 2 for i in range(len(SEQS))], device=device)
    assert not out[live].isnan().any()


@pytest.mark.parametrize("parts", [2, 4])
def test_rope_decode_attention_adds_the_partial_sums_of_q_k_v(target, paged_batch, parts):
    """q, k, v sliced out of one qkv GEMM's split-K partial sums give the bits of their totals."""
    from core.ops.triton_decode_attention import rope_decode_attention

    device, dtype = target
    heads, kv_heads, d = 4, 2, 16
    b, _, _, cos, sin = decode_step(paged_batch, device, dtype, heads, kv_heads, 4, d)
    meta, t = b["meta"], len(SEQS)
    qkv = partials((t, (heads + 2 * kv_heads) * d), parts, dtype, device)
    sizes = [heads * d, kv_heads * d, kv_heads * d]
    q, k, v = (p.view(t, -1, d) for p in qkv.split(sizes, dim=-1))
    whole = [x.view(t, -1, d) for x in qkv.total().split(sizes, dim=-1)]
    args = (meta.slot_mapping, meta.block_tables, meta.context_lens, 0.25)
    caches = [b["k_cache"].clone(), b["v_cache"].clone()]
    out = rope_decode_attention(q, k, v, cos, sin, b["k_cache"], b["v_cache"], *args, splits=3)
    want = rope_decode_attention(*whole, cos, sin, *caches, *args, splits=3)
    assert torch.equal(out, want)
    assert torch.equal(b["k_cache"].nan_to_num(), caches[0].nan_to_num())
    assert torch.equal(b["v_cache"].nan_to_num(), caches[1].nan_to_num())
