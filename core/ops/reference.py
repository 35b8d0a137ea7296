"""Torch references of the model ops: the CPU path and the oracle for the Triton kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.layers.attention_metadata import AttentionMetadata


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x [T, H] -> [T, H]; statistics in fp32 whatever the activation dtype
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (out * weight.float()).to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the pre-norm residual stream in one op."""
    summed = (x.float() + residual.float()).to(x.dtype)
    return rms_norm(summed, weight, eps), summed


def rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE. q [T, H, D], k [T, Hk, D], cos/sin [T, D/2] (fp32) -> rotated q, k."""

    def rot(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)  # (T, h, D/2) each
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)

    return rot(q), rot(k)


def rotary_store_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    """RoPE on q and k, then k and v into the paged cache (store_kv); returns the rotated q."""
    q, k = rotary(q, k, cos, sin)
    store_kv(k, v, k_cache, v_cache, slot_mapping)
    return q


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    # x [T, 2I] (gate | up) -> [T, I]
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate.float()).mul(up.float()).to(x.dtype)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write new K/V into the paged cache. k, v [T, Hk, D]; caches [NB, BS, Hk, D]; slots [T]."""
    bs = k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    # (block, token) indexing writes through any strides (the engine's caches are head-major views)
    k_cache[slots // bs, slots % bs] = k[keep].to(k_cache.dtype)
    v_cache[slots // bs, slots % bs] = v[keep].to(v_cache.dtype)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its whole cached context.

    q [T, H, D]; caches [NB, BS, Hk, D] -> [T, H, D]. New token i of a sequence with C cached
    tokens and Q new ones sits at position C - Q + i and sees positions 0..C - Q + i.
    """
    out = torch.empty_like(q)
    bs = k_cache.shape[1]
    starts = meta.query_start_loc.tolist()
    ctx_lens = meta.context_lens.tolist()
    num_heads, num_kv = q.shape[1], k_cache.shape[2]
    for i, ctx in enumerate(ctx_lens):
        q_lo, q_hi = starts[i], starts[i + 1]
        n_q = q_hi - q_lo
        if n_q == 0:
            continue
        n_blocks = (ctx + bs - 1) // bs
        blocks = meta.block_tables[i, :n_blocks].long()
        k = k_cache[blocks].reshape(-1, num_kv, k_cache.shape[-1])[:ctx]  # (C, Hk, D)
        v = v_cache[blocks].reshape(-1, num_kv, v_cache.shape[-1])[:ctx]
        if num_kv != num_heads:
            k = k.repeat_interleave(num_heads // num_kv, dim=1)
            v = v.repeat_interleave(num_heads // num_kv, dim=1)
        qi = q[q_lo:q_hi].float().transpose(0, 1)  # (H, Q, D)
        scores = qi @ k.float().permute(1, 2, 0) * scale  # (H, Q, C)
        q_pos = torch.arange(ctx - n_q, ctx, device=q.device)[:, None]  # (Q, 1)
        k_pos = torch.arange(ctx, device=q.device)[None, :]  # (1, C)
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
        probs = scores.softmax(dim=-1)
        out[q_lo:q_hi] = (probs @ v.float().transpose(0, 1)).transpose(0, 1).to(q.dtype)
    return out


def rope_paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """rotary_store_kv, then paged_attention: RoPE on the new tokens' q and k, their k and v into
    the cache, and their attention over the whole context. q [T, H, D]; k, v [T, Hk, D]."""
    q = rotary_store_kv(q, k, v, cos, sin, k_cache, v_cache, meta.slot_mapping)
    return paged_attention(q, k_cache, v_cache, meta, scale)
