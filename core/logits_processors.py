"""The logits processors of the sampler (core/sampler.py): bans, penalties, temperature,
top-k / top-p / min-p truncation and the seeded exponential race, each on a [B, V] batch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain

import numpy as np
import torch
from torch import Tensor

from core.sampling_params import SamplingParams

# Largest top_k for which torch.topk beats a full sort of the vocabulary. H100, V=103168,
# B=256, torch 2.11: topk 0.63-0.68 ms for k <= 1024 vs sort 3.96 ms; at k=4096 topk falls
# back to a sort (3.96 ms).
TOPK_INSTEAD_OF_SORT = 1024


def to_device(t: Tensor, device: torch.device) -> Tensor:
    # Pinned + non_blocking so the copy does not wait for the model's kernels to finish.
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _flat_index(token_ids: Sequence[Sequence[int]], vocab_size: int) -> Tensor:
    """Row-major indices row * V + token into a flattened [B, V] tensor, built on the host."""
    lens = np.fromiter(map(len, token_ids), dtype=np.int64, count=len(token_ids))  # [B]
    # fromiter over a chain is ~7x faster than torch.tensor on a flattened Python list.
    tokens = np.fromiter(chain.from_iterable(token_ids), dtype=np.int64, count=int(lens.sum()))
    rows = np.repeat(np.arange(len(token_ids), dtype=np.int64), lens)  # [N]
    return torch.from_numpy(rows * vocab_size + tokens)  # [N]


def token_counts(
    token_ids: Sequence[Sequence[int]], vocab_size: int, device: torch.device | str = "cpu"
) -> Tensor:
    """counts[b, v] = how often token v occurs in token_ids[b], as fp32 [B, V] (scatter_add)."""
    device = torch.device(device)
    idx = to_device(_flat_index(token_ids, vocab_size), device)  # [N]
    counts = torch.zeros(len(token_ids) * vocab_size, dtype=torch.float32, device=device)
    counts.scatter_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
    return counts.view(len(token_ids), vocab_size)  # [B, V]


def banned_token_ids(
    params: SamplingParams, num_output_tokens: int, eos_token_ids: Iterable[int]
) -> list[int]:
    """Tokens a row may not sample now: EOS for ignore_eos; EOS and stop ids before min_tokens."""
    banned: list[int] = []
    if num_output_tokens < params.min_tokens:
        banned += [*eos_token_ids, *params.stop_token_ids]
    elif params.ignore_eos:
        banned += list(eos_token_ids)
    return banned


def apply_bans(logits: Tensor, banned: Sequence[Sequence[int]]) -> Tensor:
    """logits [B, V] with logits[b, v] = -inf for v in banned[b] (ids >= V are ignored)."""
    B, V = logits.shape
    banned = [[t for t in row if 0 <= t < V] for row in banned]
    idx = to_device(_flat_index(banned, V), logits.device)  # [N]
    out = logits.clone()
    out.view(-1).index_fill_(0, idx, float("-inf"))
    return out  # [B, V]


def apply_penalties(
    logits: Tensor,
    prompt_counts: Tensor | None,
    output_counts: Tensor,
    repetition_penalty: Tensor,
    presence_penalty: Tensor,
    frequency_penalty: Tensor,
) -> Tensor:
    """Repetition (over prompt + output), then presence/frequency (over output) penalties.

    logits, prompt_counts, output_counts [B, V]; the penalties [B]. prompt_counts may be None
    (no row has a repetition penalty, or only output tokens count).
    """
    seen = output_counts > 0  # [B, V]
    if prompt_counts is not None:
        seen = seen | (prompt_counts > 0)
    rp = repetition_penalty[:, None]  # [B, 1]
    penalized = torch.where(logits > 0, logits / rp, logits * rp)  # [B, V]
    logits = torch.where(seen, penalized, logits)
    logits = logits - frequency_penalty[:, None] * output_counts
    return logits - presence_penalty[:, None] * (output_counts > 0).to(logits.dtype)


def apply_temperature(logits: Tensor, temperature: Tensor) -> Tensor:
    """logits [B, V] / temperature [B] (every temperature > 0)."""
    return logits / temperature[:, None]


def sorted_candidates(logits: Tensor, max_top_k: int | None = None) -> tuple[Tensor, Tensor]:
    """Each row's logits in descending order and their token ids, [B, K] each: K = max_top_k (a
    host-side bound on every row's top_k, which lets a partial topk replace the full sort of
    the vocabulary) or V. Ties keep sort order."""
    V = logits.shape[1]
    if max_top_k is not None and max_top_k <= TOPK_INSTEAD_OF_SORT:
        return logits.topk(min(max_top_k, V), dim=-1)  # [B, K] descending
    return logits.sort(dim=-1, descending=True)  # [B, V]


def truncate_sorted(sorted_logits: Tensor, top_k: Tensor | None, top_p: Tensor | None) -> Tensor:
    """Descending logits [B, K] with the ones top_k and top_p drop set to -inf.

    top_k [B] integers (>= K = off); top_p [B] in (0, 1] (1 = off); either may be None (off for
    every row). A row keeps its top_k largest logits (exactly k: ties go by position), then its
    nucleus: the smallest set of the most likely of those whose probability sums to >= top_p
    (always at least one token).
    """
    if top_k is not None:
        positions = torch.arange(sorted_logits.shape[1], device=sorted_logits.device)  # [K]
        sorted_logits = sorted_logits.masked_fill(positions[None, :] >= top_k[:, None], -torch.inf)
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)  # [B, K]
        cum = probs.cumsum(dim=-1)  # [B, K]
        cum_before = torch.nn.functional.pad(cum[:, :-1], (1, 0))  # [B, K] mass of better tokens
        drop = (cum_before >= top_p[:, None]) & (top_p[:, None] < 1.0)  # [B, K]
        sorted_logits = sorted_logits.masked_fill(drop, -torch.inf)
    return sorted_logits


def apply_top_k_top_p(
    logits: Tensor, top_k: Tensor | None, top_p: Tensor | None, max_top_k: int | None = None
) -> Tensor:
    """logits [B, V] with the tokens top_k and top_p drop (truncate_sorted) at -inf."""
    sorted_logits, sorted_idx = sorted_candidates(logits, max_top_k)
    sorted_logits = truncate_sorted(sorted_logits, top_k, top_p)
    return torch.full_like(logits, -torch.inf).scatter(-1, sorted_idx, sorted_logits)  # [B, V]


def apply_min_p(logits: Tensor, min_p: Tensor) -> Tensor:
    """Drop tokens whose probability is below min_p [B] times the row's top probability."""
    probs = logits.softmax(dim=-1)  # [B, V]
    threshold = min_p[:, None] * probs.amax(dim=-1, keepdim=True)  # [B, 1]
    return logits.masked_fill(probs < threshold, -torch.inf)


def sample_exponential(probs: Tensor, generators: Sequence[torch.Generator | None]) -> Tensor:
    """One token per row of probs [B, V] by argmax(probs / q), q ~ Exponential(1) -> [B] int64.

    Rows with a generator draw their q from it (V draws per step, whatever the batch); the
    others share one draw from torch's default generator.
    """
    q = torch.empty_like(probs)  # [B, V]
    if any(g is None for g in generators):
        q.exponential_()
    for i, g in enumerate(generators):
        if g is not None:
            q[i].exponential_(generator=g)
    return _race(probs, q)


def sample_candidates(
    probs: Tensor,
    token_ids: Tensor,
    generators: Sequence[torch.Generator | None],
    draws: Sequence[int | None],
) -> Tensor:
    """One token per row from its candidates (probs [B, K] over token_ids [B, K], as
    sorted_candidates orders them) by the same exponential race -> [B] int64.

    A row with a generator draws draws[i] values for its first candidates (its top_k: the
    others have probability 0), or with draws[i] None (no top_k: then K is the vocabulary) V
    values in vocabulary order, as sample_exponential does. Either way what a seeded row draws
    depends on its own settings alone, never on the batch around it.
    """
    q = torch.ones_like(probs)  # [B, K]
    if any(g is None for g in generators):
        q.exponential_()
    for i, (g, n) in enumerate(zip(generators, draws, strict=True)):
        if g is None:
            continue
        if n is None:
            q[i] = torch.empty_like(probs[i]).exponential_(generator=g)[token_ids[i]]
        else:
            q[i, :n].exponential_(generator=g)
    choice = _race(probs, q)  # [B] candidate index
    return token_ids.gather(1, choice[:, None])[:, 0]


def _race(probs: Tensor, q: Tensor) -> Tensor:
    # exponential_ may return 0 in fp32; a tiny floor keeps probs / q finite for dropped tokens.
    q.clamp_min_(torch.finfo(q.dtype).tiny)
    return (probs / q).argmax(dim=-1)  # [B]
