"""SamplingParams: how one request is decoded (vLLM-compatible names and defaults)."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

MAX_LOGPROBS = 20  # the OpenAI API's limit on top alternatives per token

# Below this temperature logits / T overflows or the distribution is an argmax in fp32 anyway,
# so such requests are decoded greedily (vLLM uses the same threshold).
GREEDY_TEMPERATURE = 1e-5


def _fail(name: str, value: Any, expected: str) -> None:
    raise ValueError(f"SamplingParams.{name}={value!r}: expected {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class SamplingParams:
    """How one request is decoded; field names and defaults follow vLLM's SamplingParams.

    Values are checked when the object is built (and again by ``replace``): a bad one raises
    ValueError naming the field, the value and the allowed range.

    - ``n``: completions to generate for the prompt.
    - ``temperature``: 0 = greedy (argmax); values below ``GREEDY_TEMPERATURE`` count as 0.
    - ``top_p``: nucleus sampling, keep the smallest set of tokens whose probability sums to at
      least ``top_p``; 1 = off.
    - ``top_k``: keep the ``top_k`` most likely tokens; -1 = off. 0 is accepted as "off" too (as
      vLLM and OpenAI-style clients send it) and stored as -1.
    - ``min_p``: drop tokens whose probability is below ``min_p`` times the top token's; 0 = off.
    - ``repetition_penalty``: HF/vLLM semantics over prompt and output tokens; 1 = off.
    - ``presence_penalty`` / ``frequency_penalty``: OpenAI semantics over output tokens, in
      [-2, 2]; 0 = off.
    - ``stop``: strings that end the output (a single string is accepted); they are left out of
      the text unless ``include_stop_str_in_output``.
    - ``stop_token_ids``: token ids that end the output (besides EOS).
    - ``ignore_eos``: keep generating past EOS (EOS is masked out while sampling).
    - ``max_tokens``: most tokens to generate; None = up to the session length.
    - ``min_tokens``: EOS and ``stop_token_ids`` cannot be sampled before this many tokens.
    - ``seed``: makes this request's samples reproducible whatever else is in the batch.
    - ``logprobs``: None = none; k = the sampled token's logprob plus the k most likely
      alternatives (0 = the sampled token's only), from the raw model logits.
    - ``skip_special_tokens``: leave special tokens out of the detokenized text.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    seed: int | None = None
    logprobs: int | None = None
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        elif isinstance(self.stop, (list, tuple)):
            self.stop = list(self.stop)
        else:
            _fail("stop", self.stop, "a string or a list of non-empty strings")
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        elif isinstance(self.stop_token_ids, (list, tuple)):
            self.stop_token_ids = list(self.stop_token_ids)
        else:
            _fail("stop_token_ids", self.stop_token_ids, "a list of non-negative integers")
        if _is_int(self.top_k) and self.top_k == 0:
            self.top_k = -1
        self._validate()

    def _validate(self) -> None:
        if not _is_int(self.n) or self.n < 1:
            _fail("n", self.n, "an integer >= 1")
        if (
            not _is_number(self.temperature)
            or not math.isfinite(self.temperature)
            or (self.temperature < 0)
        ):
            _fail("temperature", self.temperature, "a finite number >= 0 (0 = greedy)")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            _fail("top_p", self.top_p, "a number in (0, 1] (1 = off)")
        if not _is_int(self.top_k) or not (self.top_k == -1 or self.top_k >= 1):
            _fail("top_k", self.top_k, "-1 or 0 (off) or an integer >= 1")
        if not _is_number(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            _fail("min_p", self.min_p, "a number in [0, 1] (0 = off)")
        rp = self.repetition_penalty
        if not _is_number(rp) or not math.isfinite(rp) or rp <= 0:
            _fail("repetition_penalty", rp, "a finite number > 0 (1 = off)")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2.0 <= value <= 2.0:
                _fail(name, value, "a number in [-2, 2] (0 = off)")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                _fail("stop", self.stop, "non-empty strings")
        for t in self.stop_token_ids:
            if not _is_int(t) or t < 0:
                _fail("stop_token_ids", self.stop_token_ids, "non-negative integer token ids")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            _fail("max_tokens", self.max_tokens, "an integer >= 1, or None (up to session length)")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            _fail("min_tokens", self.min_tokens, "an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            _fail("min_tokens", self.min_tokens, f"at most max_tokens={self.max_tokens}")
        if self.seed is not None and not _is_int(self.seed):
            _fail("seed", self.seed, "an integer or None")
        if self.logprobs is not None and (
            not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            _fail("logprobs", self.logprobs, f"None or an integer in [0, {MAX_LOGPROBS}]")

    @property
    def is_greedy(self) -> bool:
        """True when decoding takes the argmax: temperature ~0 or top_k == 1."""
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        """True when sampling reads the tokens so far (repetition, presence, frequency)."""
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    def clone(self) -> SamplingParams:
        """A deep copy (the lists are not shared)."""
        return copy.deepcopy(self)

    def replace(self, **changes: Any) -> SamplingParams:
        """A validated copy with ``changes`` applied, e.g. ``params.replace(seed=1)``."""
        return dataclasses.replace(self.clone(), **changes)

    @classmethod
    def from_defaults(cls, sampling_cfg: Any, **overrides: Any) -> SamplingParams:
        """Params from the config's request defaults (``cfg.sampling``), ``overrides`` winning.

        ``sampling_cfg`` needs temperature, top_p, top_k, min_p, repetition_penalty and
        max_new_tokens (which becomes ``max_tokens``). Overrides are taken as given, None
        included (``max_tokens=None`` means up to the session length), so a frontend passes
        only the fields the client set.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"SamplingParams has no field(s) {unknown}; known: {sorted(names)}")
        values: dict[str, Any] = {
            "temperature": sampling_cfg.temperature,
            "top_p": sampling_cfg.top_p,
            "top_k": sampling_cfg.top_k,
            "min_p": sampling_cfg.min_p,
            "repetition_penalty": sampling_cfg.repetition_penalty,
            "max_tokens": sampling_cfg.max_new_tokens,
        }
        values.update(overrides)
        return cls(**values)
