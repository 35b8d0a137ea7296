"""Triton top-k sampling: a decode step's token choice in two launches instead of ~25 torch ops.

core/sampler.py's candidate path (every sampling row has a top_k) runs a partial topk over the
vocabulary, then temperature, the top-k / top-p / min-p truncation, a softmax and the
exponential race on the [B, K] survivors: small kernels, each a few microseconds plus a gap, for
a few hundred bytes of work per row. Here:

1. ``_chunk_topk_kernel``, grid (B, chunks): each program takes the K_PAD largest logits of its
   CHUNK-wide slice of the vocabulary. A logit and its token id travel as one int64 key (the
   fp32 bits made order-preserving, times 2^32, minus the id + 1), so one ``tl.topk`` ranks by
   value and breaks ties towards the lower id.
2. ``_sample_kernel``, grid (B,): the row's K_PAD best keys over all chunks, then what
   logits_processors.truncate_sorted and sample_candidates do, in registers: logits / T, drop
   positions >= top_k, the top-p nucleus, min-p, softmax, argmax(probs / q) with the row's
   exponential draws q [B, K_PAD] (drawn by the caller from the rows' generators), and the
   chosen token id.

The torch candidate path is the reference (tests/ops/test_triton_sampling.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Vocabulary slice per program of the first kernel: internlm-chat-20b's 103168 logits make 26
# programs per row.
CHUNK = 4096
# The largest top_k this path takes (the candidates of all chunks are ranked by one program)
MAX_TOP_K = 64
NO_KEY = tl.constexpr(-(2**63))  # ranks below every logit: slots past the vocabulary


@triton.jit
def _keys(x, idx):
    """int64 sort keys of fp32 logits ``x`` at token ids ``idx``: larger logit -> larger key,
    and for equal logits the lower id ranks higher."""
    bits = x.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # signed-int order of the floats
    # ordered * 2^32 - (id + 1): in ((ordered - 1) * 2^32, ordered * 2^32), so keys of
    # different logits never interleave and a lower id gives a higher key
    return (ordered.to(tl.int64) << 32) - idx.to(tl.int64) - 1


@triton.jit
def _chunk_topk_kernel(logits_ptr, keys_ptr, V, stride_l,
                       CHUNK: tl.constexpr, K_PAD: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    idx = chunk * CHUNK + tl.arange(0, CHUNK)
    x = tl.load(logits_ptr + row * stride_l + idx, mask=idx < V, other=0.0)
    keys = tl.where(idx < V, _keys(x, idx), NO_KEY)
    best = tl.topk(keys, K_PAD)  # [K_PAD], descending
    dst = keys_ptr + (row * tl.num_programs(1) + chunk) * K_PAD + tl.arange(0, K_PAD)
    tl.store(dst, best)


@triton.jit
def _softmax(v):
    e = tl.exp(v - tl.max(v, axis=0))
    return e / tl.sum(e, axis=0)


@triton.jit
def _sample_kernel(keys_ptr, logits_ptr, params_ptr, q_ptr, out_ptr, n_chunks, stride_l,
                   stride_p, CHUNKS_PAD: tl.constexpr, K_PAD: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CHUNKS_PAD * K_PAD)
    src = keys_ptr + row * n_chunks * K_PAD + offs
    keys = tl.load(src, mask=offs < n_chunks * K_PAD, other=NO_KEY)
    best = tl.topk(keys, K_PAD)  # [K_PAD], the row's candidates, best first
    idx = ((((best >> 32) + 1) << 32) - best - 1).to(tl.int32)  # token ids (_keys inverted)
    pos = tl.arange(0, K_PAD)
    # per row: temperature, top_p, top_k, min_p (as the sampler's parameter table)
    temperature = tl.load(params_ptr + row * stride_p)
    top_p = tl.load(params_ptr + row * stride_p + 1)
    top_k = tl.load(params_ptr + row * stride_p + 2)
    min_p = tl.load(params_ptr + row * stride_p + 3)
    v = tl.load(logits_ptr + row * stride_l + idx) / temperature
    v = tl.where(pos < top_k, v, -float("inf"))
    probs = _softmax(v)
    before = tl.cumsum(probs, axis=0) - probs  # mass of the better candidates
    cut = tl.where(top_p < 1.0, top_p, float("inf"))  # top_p 1: keep all
    v = tl.where(before >= cut, -float("inf"), v)
    probs = _softmax(v)
    v = tl.where(probs < min_p * tl.max(probs, axis=0), -float("inf"), v)
    probs = _softmax(v)
    q = tl.maximum(tl.load(q_ptr + row * K_PAD + pos), 1.1754943508222875e-38)  # fp32 tiny
    choice = tl.argmax(probs / q, axis=0)
    token = tl.sum(tl.where(pos == choice, idx, 0), axis=0)
    tl.store(out_ptr + row, token.to(tl.int64))


def k_pad(max_top_k: int) -> int:
    """Candidates per row for a batch whose largest top_k is ``max_top_k``."""
    return max(16, triton.next_power_of_2(max_top_k))


def sample_top_k(
    logits: torch.Tensor, params: torch.Tensor, q: torch.Tensor, chunk: int = CHUNK
) -> torch.Tensor:
    # logits [B, V] fp32 · params [B, >= 4] fp32, columns temperature (> 0), top_p, top_k
    # (>= 1), min_p · q [B, K_PAD] fp32 exponential draws for the candidates, best first
    #   -> token ids [B] int64
    b, v = logits.shape
    kp = q.shape[1]
    assert logits.dtype == torch.float32 and logits.stride(1) == 1, "logits: fp32 [B, V] rows"
    assert params.shape[0] == b and params.shape[1] >= 4 and params.stride(1) == 1, (
        f"params: expected [{b}, >= 4] with unit column stride, got {tuple(params.shape)}"
    )
    assert params.dtype == torch.float32, f"params: expected fp32, got {params.dtype}"
    assert q.shape == (b, kp) and q.is_contiguous() and kp == triton.next_power_of_2(kp), (
        f"q: expected [{b}, K_PAD] with K_PAD a power of two, got {tuple(q.shape)}"
    )
    assert 16 <= kp <= min(MAX_TOP_K, v) and kp <= chunk, f"K_PAD={kp}, chunk={chunk}, V={v}"
    out = torch.empty(b, dtype=torch.int64, device=logits.device)
    if b == 0:
        return out
    n_chunks = triton.cdiv(v, chunk)
    keys = torch.empty((b, n_chunks, kp), dtype=torch.int64, device=logits.device)
    _chunk_topk_kernel[(b, n_chunks)](
        logits, keys, v, logits.stride(0), CHUNK=chunk, K_PAD=kp, num_warps=8
    )
    _sample_kernel[(b,)](
        keys, logits, params, q, out, n_chunks, logits.stride(0), params.stride(0),
        CHUNKS_PAD=triton.next_power_of_2(n_chunks), K_PAD=kp, num_warps=4,
    )  # fmt: skip
    return out
