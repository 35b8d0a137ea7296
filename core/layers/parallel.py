"""Tensor-parallel layers: each rank holds a slice of the weights and of the work.

Models build their layers through the four factories below with *per-rank* sizes (heads/N,
intermediate/N, vocab/N, from ``TPGroup.split``). At N=1 the factories return the plain layers,
so a single-GPU model has no extra op and no check on its hot path.

- column-parallel (qkv, gate_up, lm_head): a rank owns a slice of every output shard; the
  outputs stay split (attention heads, MLP features) or are gathered (logits).
- row-parallel (o, down): a rank owns a slice of the inputs; partial sums are all-reduced.
- vocab-parallel embedding: a rank owns a slice of the vocabulary; rows it does not own are
  zero, and the all-reduce fills them in.

Weights always come *full* (a checkpoint tensor, or a workspace tensor converted once at N=1)
and each layer narrows them to its rank's slice with the parameter's ``output_dim`` /
``output_pack`` or ``input_dim`` / ``input_pack`` (core.weight_format): ``load_shard`` for one
checkpoint tensor, ``narrow_full`` for a whole (fused, repacked) workspace tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.distributed import TensorParallelError, TPGroup
from core.layers.linear import Linear
from core.weight_format import LinearMethod


def _narrow(t: torch.Tensor, dim: int, pack: int, size: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s ``size`` features of ``t`` along ``dim`` (``pack`` features an element)."""
    return t.narrow(dim, rank * size // pack, size // pack)


class ColumnParallelLinear(Linear):
    """``output_sizes`` are this rank's; each is 1/N of the full output shard."""

    def __init__(self, tp: TPGroup, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tp = tp

    def load_shard(
        self, param_name: str, loaded: torch.Tensor, shard: int | None, source: str
    ) -> None:
        param = getattr(self, param_name)
        dim = getattr(param, "output_dim", None)
        if dim is not None:
            size = self.output_sizes[0 if shard is None else shard]
            loaded = _narrow(loaded, dim, param.output_pack, size, self.tp.rank)
        super().load_shard(param_name, loaded, shard, source)

    def narrow_full(self, param_name: str, full: torch.Tensor) -> torch.Tensor:
        """A fused full tensor -> this rank's slice of each output shard, concatenated."""
        param = getattr(self, param_name)
        dim = getattr(param, "output_dim", None)
        if dim is None:
            return full
        pack = param.output_pack
        shards = full.split([s * self.tp.size // pack for s in self.output_sizes], dim=dim)
        parts = [_narrow(t, dim, pack, s, self.tp.rank) for t, s in zip(shards, self.output_sizes)]
        return torch.cat(parts, dim=dim)


class RowParallelLinear(Linear):
    """``input_size`` is this rank's 1/N of the inputs; the output is all-reduced, and the bias
    is added once (by rank 0, before the sum)."""

    def __init__(self, tp: TPGroup, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tp = tp

    def _narrow_input(self, param_name: str, full: torch.Tensor) -> torch.Tensor:
        param = getattr(self, param_name)
        dim = getattr(param, "input_dim", None)
        if dim is None:
            return full  # bias: one per output, every rank holds it whole
        return _narrow(full, dim, param.input_pack, self.input_size, self.tp.rank)

    def load_shard(
        self, param_name: str, loaded: torch.Tensor, shard: int | None, source: str
    ) -> None:
        super().load_shard(param_name, self._narrow_input(param_name, loaded), shard, source)

    def narrow_full(self, param_name: str, full: torch.Tensor) -> torch.Tensor:
        return self._narrow_input(param_name, full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias if self.tp.rank == 0 else None
        # the all-reduce adds whole outputs: never partial sums
        return self.tp.all_reduce(self._product(x, bias, may_defer=False))


class VocabParallelEmbedding(nn.Module):
    """Rows ``[rank * V/N, (rank + 1) * V/N)`` of the embedding table."""

    def __init__(self, tp: TPGroup, num_embeddings: int, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.tp = tp
        self.num_embeddings = num_embeddings  # this rank's
        self.start = tp.rank * num_embeddings
        self.weight = nn.Parameter(
            torch.empty(num_embeddings, dim, dtype=dtype), requires_grad=False
        )

    def load_shard(self, param_name: str, loaded: torch.Tensor, shard: None, source: str) -> None:
        part = self.narrow_full(param_name, loaded)
        if tuple(part.shape) != tuple(self.weight.shape):
            raise TensorParallelError(
                f"{source}: checkpoint shape {tuple(loaded.shape)} gives this rank "
                f"{tuple(part.shape)}, expected {tuple(self.weight.shape)}; is model.vocab_size right?"
            )
        self.weight.data.copy_(part)

    def narrow_full(self, param_name: str, full: torch.Tensor) -> torch.Tensor:
        return full.narrow(0, self.start, self.num_embeddings)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.start  # (T,)
        outside = (local < 0) | (local >= self.num_embeddings)
        x = F.embedding(local.masked_fill(outside, 0), self.weight)  # (T, hidden)
        return self.tp.all_reduce(x.masked_fill(outside.unsqueeze(-1), 0.0))


class ParallelLMHead(ColumnParallelLinear):
    """Column-parallel over the vocabulary; ``forward`` gathers the full logits on every rank."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_gather(super().forward(x))  # (B, V/N) per rank -> (B, V)


# ---- factories: plain layers at N=1 ------------------------------------------------------------
def column_linear(
    tp: TPGroup, input_size: int, output_sizes: list[int], bias: bool,
    method: LinearMethod, dtype: torch.dtype, cls: type[ColumnParallelLinear] = ColumnParallelLinear,
) -> Linear:  # fmt: skip
    if tp.size == 1:
        return Linear(input_size, output_sizes, bias, method, dtype)
    for i, size in enumerate(output_sizes):
        if size % method.output_block:
            raise TensorParallelError(
                f"engine.tensor_parallel_size={tp.size}: output {i} of a column-parallel layer "
                f"gets {size} features per rank (outputs {[s * tp.size for s in output_sizes]}), "
                f"not a multiple of {method.output_block} that its weight format packs"
            )
    return cls(tp, input_size, output_sizes, bias, method, dtype)


def row_linear(
    tp: TPGroup, input_size: int, output_size: int, bias: bool,
    method: LinearMethod, dtype: torch.dtype,
) -> Linear:  # fmt: skip
    if tp.size == 1:
        return Linear(input_size, [output_size], bias, method, dtype)
    if input_size % method.input_block:
        raise TensorParallelError(
            f"engine.tensor_parallel_size={tp.size}: a row-parallel layer with input "
            f"{input_size * tp.size} gets {input_size} inputs per rank, not a multiple of "
            f"{method.input_block} (its weight format's groups / kernel chunks)"
        )
    return RowParallelLinear(tp, input_size, [output_size], bias, method, dtype)


def embedding(tp: TPGroup, num_embeddings: int, dim: int, dtype: torch.dtype) -> nn.Module:
    if tp.size == 1:
        emb = nn.Embedding(num_embeddings, dim, dtype=dtype)
        emb.weight.requires_grad_(False)
        return emb
    return VocabParallelEmbedding(tp, num_embeddings, dim, dtype)


def lm_head(
    tp: TPGroup, hidden: int, vocab: int, method: LinearMethod, dtype: torch.dtype
) -> Linear:
    return column_linear(tp, hidden, [vocab], False, method, dtype, cls=ParallelLMHead)
