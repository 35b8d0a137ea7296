"""Decode steps replayed as CUDA graphs, one per padded batch size, sharing one memory pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from core.layers.attention_metadata import AttentionMetadata

if TYPE_CHECKING:
    from core.model_runner import ModelRunner
    from core.scheduler import ScheduledBatch
    from core.sequence import FedTokens

GRAPH_BATCH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128)


@torch.inference_mode()
def capture_graphs(
    sizes: list[int], forward: Callable[[int], torch.Tensor]
) -> tuple[dict[int, torch.cuda.CUDAGraph], dict[int, torch.Tensor]]:
    """One graph of ``forward(size)`` per size and its static output, sharing one memory pool
    (largest first, so the smaller graphs reuse its memory)."""
    graphs: dict[int, torch.cuda.CUDAGraph] = {}
    outputs: dict[int, torch.Tensor] = {}
    pool = None
    for size in sorted(sizes, reverse=True):
        forward(size)  # warm up (Triton compiles, cuBLAS picks algorithms)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs[size] = forward(size)
        pool = pool or graph.pool()
        graphs[size] = graph
    torch.cuda.synchronize()
    return graphs, outputs


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
        # pinned staging per dtype, copied up with one transfer each per step; two sets used in
        # turn, since under async scheduling a step is staged while the previous step's copies
        # may still wait in the stream (each set's last copy is fenced by an event)
        self.host_i64 = torch.zeros((2, 4, limit), dtype=torch.int64, pin_memory=True)
        self.host_i32 = torch.zeros((2, limit, mb + 1), dtype=torch.int32, pin_memory=True)
        self.host_i64_np = self.host_i64.numpy()
        self.host_i32_np = self.host_i32.numpy()
        self.staged: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0
        # rows: input ids, positions, slots, and (async scheduling) where each row's input id
        # lies in the previous step's sampled tokens
        self.dev_i64 = torch.zeros((4, limit), dtype=torch.int64, device=dev)
        self.dev_i32 = torch.zeros((limit, mb + 1), dtype=torch.int32, device=dev)
        self.input_ids = self.dev_i64[0]
        self.positions = self.dev_i64[1]
        self.slot_mapping = self.dev_i64[2]
        self.slot_mapping.fill_(-1)
        self.dev_i32[:, 0] = 1
        self.context_lens = torch.ones(limit, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros((limit, mb), dtype=torch.int32, device=dev)
        self.query_start_loc = torch.arange(limit + 1, dtype=torch.int32, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

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
        # unpack the staged int32 rows into contiguous context lengths and block tables (inside
        # the graph, so a replay costs two host-to-device copies and nothing else)
        self.context_lens[:bs].copy_(self.dev_i32[:bs, 0])
        self.block_tables[:bs].copy_(self.dev_i32[:bs, 1:])
        model = self.runner.model
        hidden = model(self.input_ids[:bs], self.positions[:bs], self._meta(bs))
        return model.compute_logits(hidden).float()

    def capture(self) -> None:
        self.graphs, self.outputs = capture_graphs(self.sizes, self._forward)

    def can_run(self, num_seqs: int) -> bool:
        return num_seqs <= self.max_bs

    def run(self, batch: ScheduledBatch, fed: FedTokens | None = None) -> torch.Tensor:
        n = len(batch.seqs)
        bs = next(s for s in self.sizes if s >= n)
        bsz = self.runner.block_size
        turn = self.turn
        self.turn ^= 1
        if self.staged[turn] is not None:
            self.staged[turn].synchronize()  # the copies of two steps ago: long done
        i64, i32 = self.host_i64_np[turn], self.host_i32_np[turn]
        i64[0, :bs] = 0
        i64[2, n:bs] = -1  # padded rows write no KV
        i32[n:bs, 0] = 1
        for i, seq in enumerate(batch.seqs):
            p = len(seq) - 1
            table = seq.block_table
            i64[0, i] = seq.token_ids[-1]
            i64[1, i] = p
            i64[2, i] = table[p // bsz] * bsz + p % bsz
            i32[i, 0] = p + 1
            i32[i, 1 : 1 + len(table)] = table
        if fed is not None:
            i64[3, :n] = fed.rows
        self.dev_i64[:, :bs].copy_(self.host_i64[turn, :, :bs], non_blocking=True)
        self.dev_i32[:bs].copy_(self.host_i32[turn, :bs], non_blocking=True)
        self.staged[turn] = torch.cuda.Event()
        self.staged[turn].record()
        if fed is not None:  # the input ids of a step scheduled before its tokens were known
            torch.index_select(fed.ids, 0, self.dev_i64[3, :n], out=self.input_ids[:n])
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
