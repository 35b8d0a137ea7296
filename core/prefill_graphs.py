"""One sequence's prefill replayed as a CUDA graph, one graph per padded token count.

A batch-1 prefill run eagerly is bound by the host on the GPU machines here: the ~840 kernel
launches, cuBLAS calls and Python of 60 layers take longer than the kernels themselves
(bench/prefill_host.py; bench/results/README.md), so the time to first token followed the
host, not the GPU. Replaying a graph costs one launch. The step's tokens are padded to the
next captured size: padded rows write no KV (slot -1), belong to no sequence in the attention
metadata, and are dropped before the LM head, which runs on the last real token only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from core.cuda_graphs import capture_graphs
from core.layers.attention_metadata import AttentionMetadata

if TYPE_CHECKING:
    from core.model_runner import ModelRunner
    from core.scheduler import ScheduledBatch
    from core.sequence import Sequence

PREFILL_GRAPH_TOKENS = (16, 32, 64, 128, 256, 512, 1024, 2048)


class PrefillGraphs:
    """Static input buffers + a graph per token count; ``run`` takes a batch of one sequence
    whose step ends its prompt (it samples), starting anywhere (prefix-cached blocks are read
    through the block table like any context)."""

    def __init__(self, runner: ModelRunner, max_tokens: int) -> None:
        self.runner = runner
        self.sizes = [t for t in PREFILL_GRAPH_TOKENS if t <= max_tokens]
        top = self.sizes[-1] if self.sizes else 0
        dev = runner.device
        mb = runner.max_blocks_per_seq
        # rows: input ids, positions, slots | context length, query start, query end, last
        # row, block table: one pinned transfer per dtype, unpacked inside the graph
        self.host_i64 = torch.zeros((3, top), dtype=torch.int64, pin_memory=True)
        self.host_i32 = torch.zeros(4 + mb, dtype=torch.int32, pin_memory=True)
        self.host_i64_np, self.host_i32_np = self.host_i64.numpy(), self.host_i32.numpy()
        self.staged: torch.cuda.Event | None = None
        self.dev_i64 = torch.zeros((3, top), dtype=torch.int64, device=dev)
        self.dev_i32 = torch.zeros(4 + mb, dtype=torch.int32, device=dev)
        self.dev_i64[2].fill_(-1)  # capture writes no KV
        self.dev_i32[:4] = torch.tensor([1, 0, 1, 0], dtype=torch.int32)  # one real token
        self.context_lens = torch.ones(1, dtype=torch.int32, device=dev)
        self.query_start_loc = torch.zeros(2, dtype=torch.int32, device=dev)
        self.last_row = torch.zeros(1, dtype=torch.int64, device=dev)
        self.block_tables = torch.zeros((1, mb), dtype=torch.int32, device=dev)
        self.token_context_lens = torch.ones(top, dtype=torch.int32, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def _forward(self, t: int) -> torch.Tensor:
        self.context_lens.copy_(self.dev_i32[0:1])
        self.query_start_loc.copy_(self.dev_i32[1:3])
        self.last_row.copy_(self.dev_i32[3:4])
        self.block_tables[0].copy_(self.dev_i32[4:])
        self.token_context_lens[:t].copy_(self.context_lens.expand(t))  # dynamic NTK's length
        meta = AttentionMetadata(
            slot_mapping=self.dev_i64[2, :t],
            query_start_loc=self.query_start_loc,
            context_lens=self.context_lens,
            block_tables=self.block_tables,
            token_context_lens=self.token_context_lens[:t],
            max_query_len=t,  # sizes the attention grid; the real length is read on the device
            max_context_len=self.block_tables.shape[1] * self.runner.block_size,
            is_decode=False,
        )
        model = self.runner.model
        hidden = model(self.dev_i64[0, :t], self.dev_i64[1, :t], meta)  # (t, hidden)
        return model.compute_logits(hidden.index_select(0, self.last_row)).float()  # (1, V)

    def capture(self) -> None:
        self.graphs, self.outputs = capture_graphs(self.sizes, self._forward)

    def can_run(self, batch: ScheduledBatch) -> bool:
        if len(batch.seqs) != 1 or not self.sizes:
            return False
        seq, n = batch.seqs[0], batch.num_tokens[0]
        return n <= self.sizes[-1] and seq.num_computed_tokens + n == len(seq)

    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """Logits [1, V] (fp32) of the sequence's last token."""
        seq, n = batch.seqs[0], batch.num_tokens[0]
        t = next(s for s in self.sizes if s >= n)
        bs = self.runner.block_size
        if self.staged is not None:
            self.staged.synchronize()  # the previous prefill's copies have left the buffers
        stage_prefill(self.host_i64_np, self.host_i32_np, seq, n, t, bs)
        self.dev_i64[:, :t].copy_(self.host_i64[:, :t], non_blocking=True)
        self.dev_i32.copy_(self.host_i32, non_blocking=True)
        self.staged = torch.cuda.Event()
        self.staged.record()
        self.graphs[t].replay()
        return self.outputs[t]


def stage_prefill(
    i64: np.ndarray, i32: np.ndarray, seq: Sequence, n: int, t: int, block_size: int
) -> None:
    """Write the step's inputs for ``n`` new tokens of ``seq``, padded to ``t``, into the staging
    arrays: i64 [3, >= t] (input ids, positions, KV slots) and i32 [4 + max blocks] (context
    length, query start and end, the last real row, the block table)."""
    start = seq.num_computed_tokens
    pos = np.arange(start, start + n)
    table = np.asarray(seq.block_table, dtype=np.int64)
    i64[0, :n] = seq.token_ids[start : start + n]
    i64[1, :n] = pos
    i64[2, :n] = table[pos // block_size] * block_size + pos % block_size
    i64[:2, n:t] = 0
    i64[2, n:t] = -1  # padded rows write no KV
    i32[:4] = (start + n, 0, n, n - 1)
    i32[4 : 4 + len(table)] = table
