"""A request's sequence: its tokens, how many are in the KV cache, and its cache blocks."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass

import torch

from core.sampling_params import SamplingParams

_ids = itertools.count()

# A token still being sampled on the device when the next step is scheduled (async scheduling):
# the step reads it from the device, and the engine writes the value in once it reaches the host.
PLACEHOLDER = -1


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """One generated continuation. ``n > 1`` requests own several sequences."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        index: int = 0,
        session_id: str | None = None,
    ) -> None:
        self.seq_id = next(_ids)
        self.request_id = request_id
        self.index = index
        self.session_id = session_id
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.block_table: list[int] = []
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.num_cached_prompt_tokens = 0  # prompt tokens found in the prefix cache
        self.num_preemptions = 0
        self.arrival_time = time.monotonic()
        self.first_token_time: float | None = None
        # a seeded request's own random stream (set by the engine on the model's device)
        self.generator: torch.Generator | None = None
        self.logprobs: list = []
        self.num_placeholders = 0  # trailing PLACEHOLDER tokens (0 or 1)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def num_known_tokens(self) -> int:
        """Tokens whose values the host has (all but the trailing placeholders)."""
        return len(self.token_ids) - self.num_placeholders

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def append_placeholder(self) -> None:
        """Reserve the next token's place while the device still samples it."""
        self.token_ids.append(PLACEHOLDER)
        self.num_placeholders += 1

    def set_token(self, index: int, token_id: int) -> bool:
        """The sampled token at ``index``: fills the placeholder there (True), or appends it."""
        if index == len(self.token_ids):
            self.token_ids.append(token_id)
            return False
        assert self.token_ids[index] == PLACEHOLDER, (
            f"{self!r}: token {index} is {self.token_ids[index]}, not a placeholder"
        )
        self.token_ids[index] = token_id
        self.num_placeholders -= 1
        return True

    def drop_placeholders(self) -> None:
        """Forget tokens that will never arrive (the sequence ended while they were sampled)."""
        if self.num_placeholders:
            del self.token_ids[-self.num_placeholders :]
            self.num_placeholders = 0

    def reset_for_recompute(self) -> None:
        """After preemption: drop the cache; everything is recomputed (from the prefix cache)."""
        self.block_table = []
        self.num_computed_tokens = 0
        self.status = SequenceStatus.WAITING
        self.num_preemptions += 1

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, req={self.request_id}, tokens={len(self)}, "
            f"computed={self.num_computed_tokens}, {self.status.value})"
        )


@dataclass
class FedTokens:
    """A decode step's input tokens still on the device: row i of the step reads ``ids[rows[i]]``
    (``ids`` is the previous step's sampled tokens, [S] int64)."""

    ids: torch.Tensor
    rows: list[int]
