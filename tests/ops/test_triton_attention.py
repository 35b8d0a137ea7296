"""Triton paged attention (decode split-KV and varlen prefill) against the torch reference."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err, tolerance

from core.layers.attention_metadata import AttentionMetadata
from core.ops import reference

# (context_len C, new tokens Q) per sequence
PREFILL_BATCHES = {
    "prefill": [(5, 5), (1, 1), (37, 37)],
    "prefix-cached": [(21, 6), (40, 17), (9, 1)],  # C > Q: earlier tokens come from the cache
    "mixed": [(13, 1), (30, 30), (8, 1), (19, 4)],  # decode rows in a prefill step
}


@pytest.mark.parametrize("batch", list(PREFILL_BATCHES))
@pytest.mark.parametrize("block_size, heads, kv_heads, head_dim", [(4, 4, 4, 16), (16, 6, 2, 32)])
def test_prefill_attention(target, paged_batch, batch, block_size, heads, kv_heads, head_dim):
    from core.ops.triton_attention import paged_attention
    from core.ops.triton_prefill_attention import prefill_attention

    device, dtype = target
    b = paged_batch(PREFILL_BATCHES[batch], heads, kv_heads, head_dim, block_size, device, dtype)
    b["meta"].is_decode = False  # the varlen kernel, also for the all-decode-rows case
    scale = head_dim**-0.5
    ref = reference.paged_attention(b["q"], b["k_cache"], b["v_cache"], b["meta"], scale)
    out = paged_attention(b["q"], b["k_cache"], b["v_cache"], b["meta"], scale)
    assert out.shape == ref.shape and out.dtype == dtype
    assert not out.isnan().any()  # NaN outside the contexts: nothing read there
    assert rel_err(out, ref) < tolerance(dtype)
    if block_size != 4:
        return
    m = b["meta"]  # small tiles: several query tiles per sequence, several KV tiles per row
    small = prefill_attention(b["q"], b["k_cache"], b["v_cache"], m.block_tables, m.context_lens,
                              m.query_start_loc, m.max_query_len, scale, block_m=16, block_n=16)  # fmt: skip
    assert rel_err(small, ref) < tolerance(dtype)


@pytest.mark.parametrize("splits", [None, 1, 3])
@pytest.mark.parametrize("block_size, heads, kv_heads, head_dim", [(4, 4, 2, 16), (16, 3, 3, 32)])
def test_decode_attention(target, paged_batch, splits, block_size, heads, kv_heads, head_dim):
    from core.ops.triton_attention import paged_attention
    from core.ops.triton_decode_attention import decode_attention

    device, dtype = target
    seqs = [(1, 1), (70, 1), (16, 1), (33, 1)]
    b = paged_batch(seqs, heads, kv_heads, head_dim, block_size, device, dtype)
    meta, scale = b["meta"], head_dim**-0.5
    assert meta.is_decode
    ref = reference.paged_attention(b["q"], b["k_cache"], b["v_cache"], meta, scale)
    if splits is None:
        out = paged_attention(b["q"], b["k_cache"], b["v_cache"], meta, scale)
    else:
        out = decode_attention(b["q"], b["k_cache"], b["v_cache"], meta.block_tables,
                               meta.context_lens, scale, splits=splits)  # fmt: skip
    assert not out.isnan().any()
    assert rel_err(out, ref) < tolerance(dtype)


def graph_style(meta: AttentionMetadata, pad: int, max_blocks: int) -> AttentionMetadata:
    """The decode metadata as DecodeGraphs lays it out: static-width block tables (zeros past
    the end), ``pad`` padded rows (slot -1, context 1, block row of zeros), a static upper bound
    for max_context_len."""
    b, dev = meta.num_seqs, meta.context_lens.device
    tables = torch.zeros((b + pad, max_blocks), dtype=torch.int32, device=dev)
    live = meta.block_tables.clamp(min=0)
    tables[:b, : live.shape[1]] = live
    ctx = torch.cat([meta.context_lens, torch.ones(pad, dtype=torch.int32, device=dev)])
    return AttentionMetadata(
        slot_mapping=torch.full((b + pad,), -1, dtype=torch.int64, device=dev),
        query_start_loc=torch.arange(b + pad + 1, dtype=torch.int32, device=dev),
        context_lens=ctx,
        block_tables=tables,
        token_context_lens=ctx,
        max_query_len=1,
        max_context_len=max_blocks * 4,
        is_decode=True,
    )


@pytest.mark.parametrize("block_size", [4, 16])
def test_decode_attention_padded_graph_batch(target, paged_batch, block_size):
    from core.ops.triton_attention import paged_attention

    device, dtype = target
    seqs = [(45, 1), (3, 1), (17, 1)]
    b = paged_batch(seqs, 4, 2, 16, block_size, device, dtype)
    scale = 0.25
    ref = reference.paged_attention(b["q"], b["k_cache"], b["v_cache"], b["meta"], scale)
    meta = graph_style(b["meta"], pad=2, max_blocks=b["meta"].block_tables.shape[1] + 5)
    q = torch.cat([b["q"], torch.randn(2, 4, 16, device=device).to(dtype)])
    out = paged_attention(q, b["k_cache"], b["v_cache"], meta, scale)
    live = out[: len(seqs)]
    assert not live.isnan().any()
    assert rel_err(live, ref) < tolerance(dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decode_attention_cuda_graph_replay(paged_batch):
    """Captured once, replayed with other live context lengths: the kernel reads them on the
    device and sizes nothing from them on the host."""
    from core.ops.triton_attention import paged_attention

    heads, kv_heads, head_dim, block_size = 40, 40, 128, 16
    seqs = [(1000, 1), (300, 1), (77, 1)]
    b = paged_batch(seqs, heads, kv_heads, head_dim, block_size, "cuda", torch.float16)
    meta = graph_style(b["meta"], pad=1, max_blocks=80)
    q = torch.cat([b["q"], torch.randn(1, heads, head_dim, device="cuda").half()])
    paged_attention(q, b["k_cache"], b["v_cache"], meta, head_dim**-0.5)  # compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_attention(q, b["k_cache"], b["v_cache"], meta, head_dim**-0.5)
    for lens in ([1000, 300, 77], [500, 299, 1], [17, 300, 64]):
        meta.context_lens[:3].copy_(torch.tensor(lens, dtype=torch.int32))
        b["meta"].context_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        q[:3].copy_(torch.randn(3, heads, head_dim, device="cuda").half())
        out.fill_(float("nan"))
        graph.replay()
        ref = reference.paged_attention(
            q[:3], b["k_cache"], b["v_cache"], b["meta"], head_dim**-0.5
        )
        assert rel_err(out[:3], ref) < 2e-3, lens


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("seqs", [[(1024, 1)], [(256, 256), (700, 300)], [(513, 1)] * 16])
def test_attention_internlm_shapes_cuda(paged_batch, seqs):
    """internlm-chat-20b heads (40 x 128), block 16: decode at batch 1 and 16, prefill."""
    from core.ops.triton_attention import paged_attention

    b = paged_batch(seqs, 40, 40, 128, 16, "cuda", torch.float16)
    ref = reference.paged_attention(b["q"], b["k_cache"], b["v_cache"], b["meta"], 128**-0.5)
    out = paged_attention(b["q"], b["k_cache"], b["v_cache"], b["meta"], 128**-0.5)
    assert not out.isnan().any()
    assert rel_err(out, ref) < 2e-3
