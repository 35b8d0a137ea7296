"""Sampler: one step's logits [B, V] -> one token per sequence (plus logprobs when asked).

Order of processing, for all rows at once (the processors are in core/logits_processors.py):
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
     tokens whatever else is in the batch. With top-k or top-p this runs on each row's
     surviving tokens, best first ([B, K] with K the largest top_k: a partial topk, not the
     vocabulary): on an H100 at batch 1 a softmax and an argmax over 103168 logits took 65 of
     the ~180 us of sampling kernels per step. With ``TRITON_TOP_K`` (the default), on CUDA with
     every top_k <= 64 that path is two Triton launches.
Steps a batch does not use are skipped. Per-row settings travel to the device in one copy, and
the one host sync is the final ``.tolist()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from core.logits_processors import (
    apply_bans,
    apply_min_p,
    apply_penalties,
    apply_temperature,
    banned_token_ids,
    sample_candidates,
    sample_exponential,
    sorted_candidates,
    to_device,
    token_counts,
    truncate_sorted,
)
from core.sampling_params import SamplingParams

# The two-launch Triton top-k sampler (core/ops/triton_sampling.py): its GPU tests pass on an
# H100 and the H200, where it took the 256/512 decode step from 5.33 to 5.25 ms at batch 1 and
# 9.11 to 9.04 at batch 16 (bench/results/token_throughput-h200-s14-before.log and -after.log).
# False sends every row through the torch candidate path.
TRITON_TOP_K = True


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
    """A step's sampled tokens, still on the device. On CUDA their copy to pinned host memory
    is queued right behind the sampling, so a step queued after this one does not delay it;
    ``result()`` waits for that copy (the step's one sync) and unpacks it."""

    tokens: Tensor  # [B]; with logprobs, the packed rows of _pack_logprobs
    params: list[SamplingParams]
    top_k: int = 0  # logprob alternatives packed per row (0: tokens only)
    ids: Tensor | None = None  # [B] int64 on the device: the next step's inputs (async scheduling)

    def __post_init__(self) -> None:
        if self.ids is None:
            self.ids = self.tokens
        self._host = self.tokens
        self._copied: torch.cuda.Event | None = None
        if self.tokens.is_cuda:
            self._host = torch.empty(self.tokens.shape, dtype=self.tokens.dtype, pin_memory=True)
            self._host.copy_(self.tokens, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()

    def result(self) -> SamplerOutput:
        if self._copied is not None:
            self._copied.synchronize()
        if self._host.dim() == 1:
            return SamplerOutput(token_ids=self._host.tolist(), logprobs=[None] * len(self.params))
        return _unpack_logprobs(self._host.tolist(), self.params, self.top_k)


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
            settings = to_device(torch.cat([table, penalties], dim=1), device)  # [B, 8]
            temperature, top_p, top_k, min_p, is_greedy, rep, presence, frequency = settings.unbind(
                dim=1
            )  # each [B]

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
            generators = [None if gr else g for g, gr in zip(batch.generators, greedy, strict=True)]
            if any(p.top_k > 0 or p.top_p < 1.0 for p in active):
                # the rows' surviving tokens, best first: [B, K] instead of the vocabulary (a
                # partial topk when every row has a top_k), so the rest runs on K columns
                max_top_k = (
                    max(p.top_k for p in active) if all(p.top_k > 0 for p in active) else None
                )
                draws = [min(p.top_k, V) if p.top_k > 0 else None for p in params]
                tokens = None
                if TRITON_TOP_K and device.type == "cuda" and max_top_k is not None:
                    tokens = _sample_top_k_triton(logits, settings, max_top_k, generators, draws)
                if tokens is None:
                    # temperature > 0 keeps the order: select on the raw logits, scale the few
                    sampled, candidates = sorted_candidates(logits, max_top_k)
                    sampled = apply_temperature(sampled, temperature)
                    sampled = truncate_sorted(sampled, top_k, top_p)
                    if any(p.min_p > 0.0 for p in active):
                        sampled = apply_min_p(sampled, min_p)
                    probs = sampled.softmax(dim=-1)
                    tokens = sample_candidates(probs, candidates, generators, draws)
            else:
                sampled = apply_temperature(logits, temperature)
                if any(p.min_p > 0.0 for p in active):
                    sampled = apply_min_p(sampled, min_p)
                tokens = sample_exponential(sampled.softmax(dim=-1), generators)  # [B]
            if any(greedy):
                tokens = torch.where(is_greedy > 0.5, logits.argmax(dim=-1), tokens)

        if raw_logprobs is None:
            return PendingSample(tokens, list(params))
        k = max(p.logprobs or 0 for p in params)
        return PendingSample(_pack_logprobs(tokens, raw_logprobs, k), list(params), k, tokens)


def _sample_top_k_triton(
    logits: Tensor,
    settings: Tensor,
    max_top_k: int,
    generators: Sequence[torch.Generator | None],
    draws: Sequence[int | None],
) -> Tensor | None:
    """The candidate path in two Triton launches (core/ops/triton_sampling.py): the same
    choice as sample_candidates given the same draws, which are taken here alike. None where
    the batch's top_k is beyond what it ranks."""
    from core.ops.triton_sampling import MAX_TOP_K, k_pad, sample_top_k

    if k_pad(max_top_k) > min(MAX_TOP_K, logits.shape[1]):
        return None
    q = torch.ones(logits.shape[0], k_pad(max_top_k), device=logits.device)  # [B, K_PAD]
    if any(g is None for g in generators):
        q.exponential_()
    for i, (g, n) in enumerate(zip(generators, draws, strict=True)):
        if g is not None:
            q[i, :n].exponential_(generator=g)
    return sample_top_k(logits, settings, q)


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
