"""What the engine expects of a model class registered through ``register_models``."""

from __future__ import annotations

from typing import Protocol

import torch

from core.layers.attention_metadata import AttentionMetadata


class CausalLM(Protocol):
    """A decoder-only model over a flattened batch.

    Built as ``cls(config, linear_method, kernels, dtype)`` where ``config`` is a
    ``core.config.ModelConfig``, ``linear_method`` a ``core.weight_format.LinearMethod`` for the
    quantizable projections and ``kernels`` a ``core.kernels.KernelTable``. A model that
    supports tensor parallelism also takes ``tp`` (a ``core.distributed.TPGroup``), passed only
    when engine.tensor_parallel_size > 1, and builds its layers through
    ``core.layers.parallel``.
    """

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """input_ids, positions [T] -> hidden states [T, hidden]."""
        ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, hidden] -> logits [B, vocab]."""
        ...

    def checkpoint_target(self, name: str) -> tuple[str, str, int | None] | None:
        """Where a Hugging Face checkpoint tensor goes: (module path, param name, shard), or
        None for tensors the model does not use (e.g. rotary inv_freq)."""
        ...

    def attention_layers(self) -> list[torch.nn.Module]:
        """The PagedAttention modules, in layer order, whose caches the runner assigns."""
        ...
