"""Sampler: one step's logits [B, V] -> one token per sequence (plus logprobs when asked).

Order of processing, for all rows at once:
  1. cast the logits to fp32; if a row asks for logprobs, take log_softmax of these raw logits
     (vLLM's default "raw logprobs": before any penalty, temperature or truncation);
  2. bans: EOS and ``stop_token_ids`` -> -inf while len(output) < min_tokens; EOS -> -inf
     always when ``ignore_eos``;
  3. repetition penalty over prompt + output tokens (HF/vLLM: positive logits / p, others * p);
  4. presence / frequency penalties over output tokens (OpenAI: - presence - frequency * count);
  5. greedy rows (temperature ~0 or top_k == 1) take the argmax;
  6. the other rows: temperature, top-k, top-p, min-p, softmax, then an exponential race:
     argmax(probs / q), q ~ Exponential(1) per token, which draws a token with probability
     probs. A row with a generator draws q from it alone, so a seeded request samples the same
     tokens whatever else is in the batch.
Steps a batch does not use are skipped. Per-row settings travel to the device in one copy, and
the one host sync is the final ``.tolist()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
from torch import Tensor

from core.sampling_params import SamplingParams

# Largest top_k for which torch.topk beats a full sort of the vocabulary. H100, V=103168,
# B=256, torch 2.11: topk 0.63-0.68 ms for k <= 1024 vs sort 3.96 ms; at k=4096 topk falls
# back to a sort (3.96 ms).
TOPK_INSTEAD_OF_SORT = 1024


@dataclass
class LogprobInfo:
    """Raw-model logprobs at one position: the sampled token's and the top alternatives."""

    token_id: int
    logprob: float
    rank: int  # 1 = the most likely token under the raw logits
    top: list[tuple[int, float]]  # params.logprobs (token_id, logprob) pairs, most likely first


@dataclass
class SamplerOutput:
    """One entry per row of the batch."""

    token_ids: list[int]
    logprobs: list[LogprobInfo | None]  # None where params.logprobs is None


@dataclass
class PendingSample:
    """A step's sampled tokens, still on the device: ``result()`` copies them to the host (the
    step's one sync), so the caller can queue more GPU work before it waits."""

    tokens: Tensor  # [B]; with logprobs, the packed rows of _pack_logprobs
    params: list[SamplingParams]
    top_k: int = 0  # logprob alternatives packed per row (0: tokens only)

    def result(self) -> SamplerOutput:
        if self.tokens.dim() == 1:
            return SamplerOutput(token_ids=self.tokens.tolist(), logprobs=[None] * len(self.params))
        return _unpack_logprobs(self.tokens.tolist(), self.params, self.top_k)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """The per-sequence generator for a seeded request: build it once, pass it every step."""
    return torch.Generator(device=_resolve(device)).manual_seed(seed)


def _resolve(device: torch.device | str) -> torch.device:
    """Resolve "cuda" to "cuda:<current>", so it compares equal to a tensor's device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@dataclass
class SamplingBatch:
    """What the sampler needs to know about each row (sequence) of one step.

    ``generators[i]`` is owned by sequence i (from ``make_generator(params.seed, device)``) and
    must be None when it has no seed. ``eos_token_ids`` are the model's EOS ids, shared by all
    rows: they are masked for ``ignore_eos`` and, with ``stop_token_ids``, for ``min_tokens``.
    Token lists are referenced, not copied: the sampler reads them during the call only.
    """

    params: list[SamplingParams]
    prompt_token_ids: Sequence[Sequence[int]]  # read only when a row has repetition_penalty
    output_token_ids: Sequence[Sequence[int]]
    generators: list[torch.Generator | None]
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.params)
        for name in ("prompt_token_ids", "output_token_ids", "generators"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"SamplingBatch.{name} has {len(getattr(self, name))} rows, params has {n}"
                )
        for i, (p, g) in enumerate(zip(self.params, self.generators, strict=True)):
            if p.seed is not None and g is None:
                raise ValueError(
                    f"SamplingBatch row {i} has seed={p.seed} but no generator: create one with "
                    "make_generator(seed, device) when the sequence starts and pass it each step"
                )

    def __len__(self) -> int:
        return len(self.params)

    @classmethod
    def build(
        cls,
        params: Sequence[SamplingParams],
        prompt_token_ids: Sequence[Sequence[int]],
        output_token_ids: Sequence[Sequence[int]],
        generators: Sequence[torch.Generator | None] | None = None,
        eos_token_ids: int | Iterable[int] | None = None,
    ) -> SamplingBatch:
        """A batch from per-row lists; ``generators=None`` means no row is seeded."""
        if eos_token_ids is None:
            eos: tuple[int, ...] = ()
        elif isinstance(eos_token_ids, int):
            eos = (eos_token_ids,)
        else:
            eos = tuple(eos_token_ids)
        return cls(
            params=list(params),
            prompt_token_ids=list(prompt_token_ids),
            output_token_ids=list(output_token_ids),
            generators=[None] * len(params) if generators is None else list(generators),
            eos_token_ids=eos,
        )


def _to_device(t: Tensor, device: torch.device) -> Tensor:
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
    idx = _to_device(_flat_index(token_ids, vocab_size), device)  # [N]
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
    idx = _to_device(_flat_index(banned, V), logits.device)  # [N]
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


def apply_top_k_top_p(
    logits: Tensor, top_k: Tensor | None, top_p: Tensor | None, max_top_k: int | None = None
) -> Tensor:
    """Keep each row's top_k largest logits, then its nucleus: the smallest set of the most
    likely tokens whose probability sums to >= top_p (always at least one token).

    logits [B, V]; top_k [B] integers (>= V = off); top_p [B] in (0, 1] (1 = off). Either may
    be None (off for every row). Dropped logits become -inf; ties at the k-th value are broken
    by sort order, so exactly k survive. ``max_top_k``, a host-side bound on every row's top_k,
    lets a partial topk replace the full sort of the vocabulary.
    """
    B, V = logits.shape
    if max_top_k is not None and max_top_k <= TOPK_INSTEAD_OF_SORT:
        sorted_logits, sorted_idx = logits.topk(min(max_top_k, V), dim=-1)  # [B, K] descending
    else:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)  # [B, V]
    if top_k is not None:
        positions = torch.arange(sorted_logits.shape[1], device=logits.device)  # [K]
        sorted_logits = sorted_logits.masked_fill(positions[None, :] >= top_k[:, None], -torch.inf)
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)  # [B, K]
        cum = probs.cumsum(dim=-1)  # [B, K]
        cum_before = torch.nn.functional.pad(cum[:, :-1], (1, 0))  # [B, K] mass of better tokens
        drop = (cum_before >= top_p[:, None]) & (top_p[:, None] < 1.0)  # [B, K]
        sorted_logits = sorted_logits.masked_fill(drop, -torch.inf)
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
    # exponential_ may return 0 in fp32; a tiny floor keeps probs / q finite for dropped tokens.
    q.clamp_min_(torch.finfo(q.dtype).tiny)
    return (probs / q).argmax(dim=-1)  # [B]


class Sampler:
    """Picks the next token of every sequence in a step; see the module docstring for the order.

    ``sampler(logits, batch)`` takes logits [B, V] of any float dtype on any device, and a
    SamplingBatch with B rows, and returns a SamplerOutput; ``sampler.launch(logits, batch)``
    queues the same work and returns a PendingSample without waiting for the device.
    """

    def __call__(self, logits: Tensor, batch: SamplingBatch) -> SamplerOutput:
        return self.launch(logits, batch).result()

    def launch(self, logits: Tensor, batch: SamplingBatch) -> PendingSample:
        if logits.dim() != 2 or logits.shape[0] != len(batch):
            raise ValueError(
                f"Sampler: logits have shape {tuple(logits.shape)}, expected [B, V] with "
                f"B = {len(batch)} rows of the SamplingBatch"
            )
        B, V = logits.shape
        if B == 0:
            return PendingSample(torch.zeros(0, dtype=torch.int64), [])
        device = logits.device
        params = batch.params
        for g in batch.generators:
            if g is not None and _resolve(g.device) != device:
                raise ValueError(
                    f"Sampler: a generator is on {g.device} but the logits are on {device}; "
                    "build it with make_generator(seed, logits.device)"
                )
        logits = logits.float()  # [B, V]; a new tensor is made before anything is written
        want_logprobs = any(p.logprobs is not None for p in params)
        raw_logprobs = logits.log_softmax(dim=-1) if want_logprobs else None  # [B, V]

        # One host->device copy for all per-row numbers (none when every row is greedy and
        # unpenalized: the common decode batch). Greedy rows go through the sampling path as
        # no-op filters with top_k=1 (their draw is discarded), so they never force a full sort.
        greedy = [p.is_greedy for p in params]
        use_rep = [p.repetition_penalty != 1.0 for p in params]
        use_pf = [p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 for p in params]
        if not all(greedy) or any(use_rep) or any(use_pf):
            table = torch.tensor(
                [
                    [1.0, 1.0, 1.0, 0.0, 1.0]
                    if g
                    else [
                        p.temperature,
                        p.top_p,
                        float(p.top_k if p.top_k > 0 else V),
                        p.min_p,
                        0.0,
                    ]
                    for p, g in zip(params, greedy, strict=True)
                ],
                dtype=torch.float32,
            )  # [B, 5]
            penalties = torch.tensor(
                [[p.repetition_penalty, p.presence_penalty, p.frequency_penalty] for p in params],
                dtype=torch.float32,
            )  # [B, 3]
            temperature, top_p, top_k, min_p, is_greedy, rep, presence, frequency = _to_device(
                torch.cat([table, penalties], dim=1), device
            ).unbind(dim=1)  # each [B]

        banned = [
            banned_token_ids(p, len(out), batch.eos_token_ids)
            for p, out in zip(params, batch.output_token_ids, strict=True)
        ]
        if any(banned):
            logits = apply_bans(logits, banned)

        if any(use_rep) or any(use_pf):
            # Only rows with a penalty contribute tokens; the others' counts stay zero.
            outputs = [
                o if r or f else []
                for o, r, f in zip(batch.output_token_ids, use_rep, use_pf, strict=True)
            ]
            output_counts = token_counts(outputs, V, device)  # [B, V]
            prompt_counts = None
            if any(use_rep):
                prompts = [
                    t if r else [] for t, r in zip(batch.prompt_token_ids, use_rep, strict=True)
                ]
                prompt_counts = token_counts(prompts, V, device)  # [B, V]
            logits = apply_penalties(logits, prompt_counts, output_counts, rep, presence, frequency)

        if all(greedy):
            tokens = logits.argmax(dim=-1)  # [B]
        else:
            active = [p for p, g in zip(params, greedy, strict=True) if not g]
            sampled = apply_temperature(logits, temperature)
            if any(p.top_k > 0 or p.top_p < 1.0 for p in active):
                max_top_k = (
                    max(p.top_k for p in active) if all(p.top_k > 0 for p in active) else None
                )
                sampled = apply_top_k_top_p(sampled, top_k, top_p, max_top_k)
            if any(p.min_p > 0.0 for p in active):
                sampled = apply_min_p(sampled, min_p)
            generators = [None if gr else g for g, gr in zip(batch.generators, greedy, strict=True)]
            tokens = sample_exponential(sampled.softmax(dim=-1), generators)  # [B]
            if any(greedy):
                tokens = torch.where(is_greedy > 0.5, logits.argmax(dim=-1), tokens)

        if raw_logprobs is None:
            return PendingSample(tokens, list(params))
        k = max(p.logprobs or 0 for p in params)
        return PendingSample(_pack_logprobs(tokens, raw_logprobs, k), list(params), k)


def _pack_logprobs(tokens: Tensor, raw_logprobs: Tensor, k: int) -> Tensor:
    """The sampled token, its logprob and rank, and the top k alternatives: one [B, 3 + 2k]
    tensor, so the host gets everything with one copy."""
    sampled_lp = raw_logprobs.gather(1, tokens[:, None])  # [B, 1]
    rank = (raw_logprobs > sampled_lp).sum(dim=-1, keepdim=True) + 1  # [B, 1]
    top_lp, top_ids = raw_logprobs.topk(k, dim=-1)  # [B, k] each, sorted descending
    # fp64 holds token ids, ranks and fp32 logprobs exactly, so one tensor makes one copy.
    return torch.cat(
        [
            tokens[:, None].double(),
            sampled_lp.double(),
            rank.double(),
            top_ids.double(),
            top_lp.double(),
        ],
        dim=1,
    )  # [B, 3 + 2k]


def _unpack_logprobs(
    packed: list[list[float]], params: Sequence[SamplingParams], k: int
) -> SamplerOutput:
    token_ids, infos = [], []
    for p, row in zip(params, packed, strict=True):
        token_id = int(row[0])
        token_ids.append(token_id)
        if p.logprobs is None:
            infos.append(None)
            continue
        n = p.logprobs
        top = [(int(t), lp) for t, lp in zip(row[3 : 3 + n], row[3 + k : 3 + k + n], strict=True)]
        infos.append(LogprobInfo(token_id=token_id, logprob=row[1], rank=int(row[2]), top=top))
    return SamplerOutput(token_ids=token_ids, logprobs=infos)
