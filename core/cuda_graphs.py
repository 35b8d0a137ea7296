"""Decode steps replayed as CUDA graphs, one per padded batch size, sharing one memory pool."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from core.layers.attention_metadata import AttentionMetadata

if TYPE_CHECKING:
    from core.model_runner import ModelRunner
    from core.scheduler import ScheduledBatch

GRAPH_BATCH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128)


class DecodeGraphs:
    """Static input buffers + one captured graph per batch size; a live batch of B sequences
    replays the smallest captured size >= B with the extra rows padded (slot -1: no KV write)."""

    def __init__(self, runner: ModelRunner, max_batch_size: int) -> None:
        self.runner = runner
        limit = min(max_batch_size, runner.cfg.engine.max_batch_size)
        self.sizes = [s for s in GRAPH_BATCH_SIZES if s < limit] + [limit]
        self.max_bs = limit
        dev = runner.device
        mb = runner.max_blocks_per_seq
        self.input_ids = torch.zeros(limit, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(limit, dtype=torch.int64, device=dev)
        self.slot_mapping = torch.full((limit,), -1, dtype=torch.int64, device=dev)
        self.context_lens = torch.ones(limit, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros((limit, mb), dtype=torch.int32, device=dev)
        self.query_start_loc = torch.arange(limit + 1, dtype=torch.int32, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs],
            query_start_loc=self.query_start_loc[: bs + 1],
            context_lens=self.context_lens[:bs],
            block_tables=self.block_tables[:bs],
            token_context_lens=self.context_lens[:bs],
            max_query_len=1,
            max_context_len=self.block_tables.shape[1] * self.runner.block_size,
            is_decode=True,
        )

    def _forward(self, bs: int) -> torch.Tensor:
        model = self.runner.model
        hidden = model(self.input_ids[:bs], self.positions[:bs], self._meta(bs))
        return model.compute_logits(hidden).float()

    @torch.inference_mode()
    def capture(self) -> None:
        for bs in reversed(self.sizes):  # largest first, so smaller graphs reuse its pool
            self._forward(bs)  # warm up (Triton compiles, cuBLAS picks algorithms)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs[bs] = self._forward(bs)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize()

    def can_run(self, num_seqs: int) -> bool:
        return num_seqs <= self.max_bs

    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        n = len(batch.seqs)
        bs = next(s for s in self.sizes if s >= n)
        bsz = self.runner.block_size
        ids, pos, slots, ctx = [], [], [], []
        for seq in batch.seqs:
            p = len(seq) - 1
            ids.append(seq.token_ids[-1])
            pos.append(p)
            slots.append(seq.block_table[p // bsz] * bsz + p % bsz)
            ctx.append(p + 1)
        pad = bs - n
        dev = self.runner.device
        self.input_ids[:bs].copy_(torch.tensor(ids + [0] * pad), non_blocking=True)
        self.positions[:bs].copy_(torch.tensor(pos + [0] * pad), non_blocking=True)
        self.slot_mapping[:bs].copy_(torch.tensor(slots + [-1] * pad), non_blocking=True)
        self.context_lens[:bs].copy_(
            torch.tensor(ctx + [1] * pad, dtype=torch.int32), non_blocking=True
        )
        mb = self.block_tables.shape[1]
        tables = torch.zeros((bs, mb), dtype=torch.int32)
        for i, seq in enumerate(batch.seqs):
            tables[i, : len(seq.block_table)] = torch.tensor(seq.block_table, dtype=torch.int32)
        self.block_tables[:bs].copy_(tables.to(dev, non_blocking=True))
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
