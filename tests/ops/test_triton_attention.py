"""Triton paged attention (decode split-KV and varlen prefill) against the torch reference."""

from __future__ import annotations

import pytest
import torch
from op_tolerance import rel_err, tolerance

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
    strided = prefill_attention(b["q"], head_major(b["k_cache"]), head_major(b["v_cache"]),
                                m.block_tables, m.context_lens, m.query_start_loc,
                                m.max_query_len, scale)  # fmt: skip
    assert rel_err(strided, ref) < tolerance(dtype)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("splits", [None, 1, 3])
@pytest.mark.parametrize("block_size, heads, kv_heads, head_dim", [(4, 4, 2, 16), (16, 3, 3, 32)])
def test_decode_attention(
    target, paged_batch, splits, fused, block_size, heads, kv_heads, head_dim
):
    from core.ops.triton_attention import paged_attention
    from core.ops.triton_decode_attention import decode_attention

    device, dtype = target
    seqs = [(1, 1), (70, 1), (16, 1), (33, 1)]
    b = paged_batch(seqs, heads, kv_heads, head_dim, block_size, device, dtype)
    meta, scale = b["meta"], head_dim**-0.5
    assert meta.is_decode
    ref = reference.paged_attention(b["q"], b["k_cache"], b["v_cache"], meta, scale)
    if splits is None and fused:
        out = paged_attention(b["q"], b["k_cache"], b["v_cache"], meta, scale)
    else:
        out = decode_attention(b["q"], b["k_cache"], b["v_cache"], meta.block_tables,
                               meta.context_lens, scale, splits=splits, fused=fused)  # fmt: skip
    assert not out.isnan().any()
    assert rel_err(out, ref) < tolerance(dtype)


def head_major(cache: torch.Tensor) -> torch.Tensor:
    """The same values stored [NB, Hk, BS, D] in memory, viewed as [NB, BS, Hk, D]."""
    return cache.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)


@pytest.mark.parametrize("layout", ["contiguous", "head-major"])
@pytest.mark.parametrize("block_n", [16, 32, 64])
def test_decode_attention_tiles_and_cache_strides(
    target, paged_batch, monkeypatch, block_n, layout
):
    """Every tile width of the split loop, over a contiguous cache and a head-major one: the
    kernels address the cache through its strides, never assuming [NB, BS, Hk, D] contiguity."""
    from core.ops import triton_decode_attention as mod

    monkeypatch.setattr(mod, "BLOCK_N", block_n)
    monkeypatch.setattr(mod, "SPLIT_BLOCK_N", block_n)
    device, dtype = target
    b = paged_batch([(1, 1), (70, 1), (129, 1), (33, 1)], 4, 2, 16, 16, device, dtype)
    meta, scale = b["meta"], 0.25
    ref = reference.paged_attention(b["q"], b["k_cache"], b["v_cache"], meta, scale)
    k_cache, v_cache = b["k_cache"], b["v_cache"]
    if layout == "head-major":
        k_cache, v_cache = head_major(k_cache), head_major(v_cache)
        assert not k_cache.is_contiguous()
    for splits in (1, 3):
        out = mod.decode_attention(b["q"], k_cache, v_cache, meta.block_tables,
                                   meta.context_lens, scale, splits=splits)  # fmt: skip
        assert rel_err(out, ref) < tolerance(dtype), splits


# odd contexts; with BLOCK_N 64 the later splits of the short ones (and at 7 or 16 splits, of
# all of them) are empty: their partials carry m = -inf, l = 0
FUSED_SEQS = [(1, 1), (5, 1), (63, 1), (65, 1), (131, 1), (257, 1)]


@pytest.mark.parametrize("splits", [1, 2, 3, 7, 16])
def test_decode_attention_fused_splits(target, paged_batch, splits):
    from core.ops.triton_decode_attention import decode_attention

    device, dtype = target
    b = paged_batch(FUSED_SEQS, 4, 2, 16, 16, device, dtype)
    meta, scale = b["meta"], 0.25
    ref = reference.paged_attention(b["q"], b["k_cache"], b["v_cache"], meta, scale)
    args = (b["q"], b["k_cache"], b["v_cache"], meta.block_tables, meta.context_lens, scale)
    out = decode_attention(*args, splits=splits, fused=True)
    assert not out.isnan().any()
    assert rel_err(out, ref) < tolerance(dtype)
    unfused = decode_attention(*args, splits=splits, fused=False)
    assert rel_err(out, unfused) < tolerance(dtype)  # the same merge, in either kernel


def test_decode_attention_fused_counters_reset(target, paged_batch):
    """The last program of each (sequence, head) puts its arrival counter back to 0, so a second
    call (or a graph replay) with the same shapes merges again, at the right time."""
    from core.ops import triton_decode_attention as mod

    device, dtype = target
    b = paged_batch(FUSED_SEQS, 4, 2, 16, 16, device, dtype)
    meta, scale = b["meta"], 0.25
    ref = reference.paged_attention(b["q"], b["k_cache"], b["v_cache"], meta, scale)
    args = (b["q"], b["k_cache"], b["v_cache"], meta.block_tables, meta.context_lens, scale)
    first = mod.decode_attention(*args, splits=3, fused=True)
    counters = mod._COUNTERS[b["q"].device][-1]
    assert not counters.any()
    second = mod.decode_attention(*args, splits=3, fused=True)
    assert not counters.any()
    assert rel_err(first, ref) < tolerance(dtype)
    assert torch.equal(first, second)


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
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("seqs", [[(1000, 1), (300, 1), (77, 1)], [(1000, 1)]])
def test_decode_attention_cuda_graph_replay(paged_batch, fused, seqs):
    """Captured once, replayed with other live context lengths: the kernel reads them on the
    device and sizes nothing from them on the host. Fused, each replay must also find the
    arrival counters back at 0 (no memset is captured once they exist)."""
    from core.ops import triton_decode_attention as mod

    heads, kv_heads, head_dim, block_size = 40, 40, 128, 16
    b = paged_batch(seqs, heads, kv_heads, head_dim, block_size, "cuda", torch.float16)
    meta = graph_style(b["meta"], pad=1, max_blocks=80)
    q = torch.cat([b["q"], torch.randn(1, heads, head_dim, device="cuda").half()])
    n = len(seqs)

    def attend():
        return mod.decode_attention(q, b["k_cache"], b["v_cache"], meta.block_tables,
                                    meta.context_lens, head_dim**-0.5, fused=fused)  # fmt: skip

    attend()  # compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attend()
    for lens in ([1000, 300, 77], [500, 299, 1], [17, 300, 64], [999, 1, 77]):
        lens = lens[:n]
        meta.context_lens[:n].copy_(torch.tensor(lens, dtype=torch.int32))
        b["meta"].context_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        q[:n].copy_(torch.randn(n, heads, head_dim, device="cuda").half())
        ref = reference.paged_attention(
            q[:n], b["k_cache"], b["v_cache"], b["meta"], head_dim**-0.5
        )
        outs = []
        for _ in range(3):  # replays with the same inputs merge again, the same way
            out.fill_(float("nan"))
            graph.replay()
            assert rel_err(out[:n], ref) < 2e-3, lens
            outs.append(out[:n].clone())
        assert all(torch.equal(o, outs[0]) for o in outs), lens
    if fused:
        torch.cuda.synchronize()
        assert not mod._COUNTERS[q.device][-1].any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decode_attention_fused_first_call_in_capture(paged_batch):
    """No counter buffer yet when the graph is captured: it is made (and zeroed) in the graph's
    pool and must survive the capture."""
    from core.ops import triton_decode_attention as mod

    b = paged_batch([(700, 1)], 40, 40, 128, 16, "cuda", torch.float16)
    m, scale = b["meta"], 128**-0.5
    args = (b["q"], b["k_cache"], b["v_cache"], m.block_tables, m.context_lens, scale)
    mod.decode_attention(*args, fused=True)  # compile
    torch.cuda.synchronize()
    saved = mod._COUNTERS.pop(b["q"].device)
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = mod.decode_attention(*args, fused=True)
        ref = reference.paged_attention(b["q"], b["k_cache"], b["v_cache"], m, scale)
        for _ in range(3):
            out.fill_(float("nan"))
            graph.replay()
            assert rel_err(out, ref) < 2e-3
        assert torch.equal(out, mod.decode_attention(*args, fused=True))  # eager, same buffer
    finally:
        mod._COUNTERS[b["q"].device][:0] = saved  # older buffers stay alive too


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
