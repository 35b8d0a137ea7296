"""Builds the model from the registries, loads its weights, owns the KV cache and CUDA graphs."""

from __future__ import annotations

import logging

import torch

from core.config import NybbleConfig
from core.cuda_graphs import DecodeGraphs
from core.distributed import SINGLE, TPGroup
from core.layers.attention_metadata import AttentionMetadata
from core.logits_processors import to_device
from core.model_builder import load_model
from core.ops.pdl import set_pdl
from core.plugins import Registries
from core.prefill_graphs import PrefillGraphs
from core.scheduler import ScheduledBatch
from core.sequence import FedTokens

log = logging.getLogger(__name__)

GRAPH_OPS = ("store_kv", "paged_attention", "rope_paged_attention")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("engine.device=cuda but torch sees no CUDA GPU; use engine.device=cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


class ModelRunner:
    """Turns a ScheduledBatch into logits for the sequences that sample this step.

    Under tensor parallelism every rank has one, holding its slice of the model and of the KV
    cache (its heads); all ranks execute the same batches (core.tp_worker).
    """

    def __init__(self, cfg: NybbleConfig, regs: Registries, tp: TPGroup = SINGLE) -> None:
        self.cfg = cfg
        self.tp = tp
        self.device = resolve_device(cfg.engine.device)
        self.dtype = resolve_dtype(cfg.engine.dtype, self.device)
        set_pdl(cfg.engine.pdl)  # before the warm-up compiles and the graphs capture the kernels
        torch.manual_seed(cfg.engine.seed)
        loaded = load_model(cfg, regs, self.device, self.dtype, tp)
        self.model = loaded.model
        self.model_config = loaded.model_config
        self.format, self.format_params = loaded.format, loaded.format_params
        self.kernels = loaded.kernels
        self.block_size = cfg.engine.block_size
        self.num_blocks = self._num_kv_blocks()
        self._allocate_kv_cache()
        self.max_blocks_per_seq = -(-self.model_config.session_len // self.block_size)
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        if self.device.type == "cuda":
            self.warm_up()
        # the torch references of the attention ops sync with the host: not capturable
        capturable = all(self.kernels.chosen.get(op) == "triton" for op in GRAPH_OPS)
        if self.device.type == "cuda" and cfg.engine.cuda_graphs and capturable:
            self.graphs = DecodeGraphs(self, cfg.engine.max_graph_batch_size)
            self.graphs.capture()
            if cfg.engine.prefill_graphs and tp.size == 1:
                self.prefill_graphs = PrefillGraphs(self, cfg.engine.max_num_batched_tokens)
                self.prefill_graphs.capture()

    # ---- KV cache ----------------------------------------------------------------------
    def kv_bytes_per_block(self) -> int:
        mc = self.model_config
        head_dim = mc.hidden_size // mc.num_heads
        kv_heads = (mc.num_kv_heads or mc.num_heads) // self.tp.size  # this rank's
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * mc.num_layers * self.block_size * kv_heads * head_dim * elem

    def _num_kv_blocks(self) -> int:
        e = self.cfg.engine
        if e.num_kv_blocks is not None:
            return e.num_kv_blocks
        per_block = self.kv_bytes_per_block()
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            mc = self.model_config
            # activations of the largest step and the logits, with a safety factor of 2
            act = e.max_num_batched_tokens * (8 * mc.hidden_size + 4 * mc.intermediate_size) * 2
            act += e.max_batch_size * mc.vocab_size * 4 * 2
            budget = free - (1.0 - e.gpu_memory_utilization) * total - 2 * act
        else:
            budget = e.cpu_kv_cache_bytes
        num = int(budget // per_block)
        if self.tp.size > 1:  # block ids are shared: every rank must have all of them
            num = self.tp.min_int(num, self.device)
        if num < 1:
            raise RuntimeError(
                f"no memory left for the KV cache ({budget / 2**30:.2f} GiB after weights, "
                f"{per_block / 2**20:.1f} MiB per block); raise engine.gpu_memory_utilization "
                "or engine.cpu_kv_cache_bytes"
            )
        return num

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Run prefill steps of the sizes a server meets, so Triton compiles its kernels (one per
        shape bucket) now rather than inside the first users' requests."""
        from core.sampling_params import SamplingParams
        from core.sequence import Sequence

        budget = self.cfg.engine.max_num_batched_tokens
        sizes = sorted({n for n in (1, 4, 16, 64, 256, 1024, budget) if n <= budget})
        for n in sizes:
            blocks = -(-n // self.block_size)
            if blocks > self.num_blocks:
                break
            seq = Sequence("warm-up", [0] * n, SamplingParams())
            seq.block_table = list(range(blocks))  # free blocks; what they hold is overwritten
            self.execute(ScheduledBatch(seqs=[seq], num_tokens=[n]))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _allocate_kv_cache(self) -> None:
        for attn in self.model.attention_layers():
            shape = (self.num_blocks, self.block_size, attn.num_kv_heads, attn.head_dim)
            attn.k_cache = torch.empty(shape, dtype=self.dtype, device=self.device)
            attn.v_cache = torch.empty(shape, dtype=self.dtype, device=self.device)

    # ---- running -------------------------------------------------------------------------
    def prepare(
        self, batch: ScheduledBatch
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """Flatten the batch: input ids, positions, attention metadata, rows to sample."""
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        q_loc = [0]
        ctx_lens: list[int] = []
        tok_ctx: list[int] = []
        sample_rows: list[int] = []
        bs = self.block_size
        for seq, n in zip(batch.seqs, batch.num_tokens):
            start = seq.num_computed_tokens
            end = start + n
            ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            q_loc.append(q_loc[-1] + n)
            ctx_lens.append(end)
            tok_ctx.extend([end] * n)
            if end == len(seq):
                sample_rows.append(q_loc[-1] - 1)
        max_blocks = max(len(s.block_table) for s in batch.seqs)
        tables = [s.block_table + [-1] * (max_blocks - len(s.block_table)) for s in batch.seqs]
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            query_start_loc=torch.tensor(q_loc, dtype=torch.int32, device=dev),
            context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            token_context_lens=torch.tensor(tok_ctx, dtype=torch.int32, device=dev),
            max_query_len=max(batch.num_tokens),
            max_context_len=max(ctx_lens),
            is_decode=batch.is_decode,
        )
        input_ids = torch.tensor(ids, dtype=torch.int64, device=dev)
        pos = torch.tensor(positions, dtype=torch.int64, device=dev)
        return input_ids, pos, meta, sample_rows

    # Async scheduling feeds a step its input tokens from the previous step's sampling on the
    # device; tensor-parallel workers would need them too, so ParallelModelRunner says no.
    can_feed = True

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, fed: FedTokens | None = None) -> torch.Tensor:
        """Run one step; return logits [S, vocab] (fp32) for the S sequences that sample.

        With ``fed`` (a decode step scheduled before the previous step's tokens reached the
        host), each sequence's input token is ``fed.ids[fed.rows[i]]``, read on the device.
        """
        if self.graphs is not None and batch.is_decode and self.graphs.can_run(len(batch.seqs)):
            return self.graphs.run(batch, fed)
        if self.prefill_graphs is not None and fed is None and self.prefill_graphs.can_run(batch):
            return self.prefill_graphs.run(batch)
        input_ids, positions, meta, rows = self.prepare(batch)
        if fed is not None:
            assert batch.is_decode, "only decode steps take their inputs from the device"
            rows_t = to_device(torch.tensor(fed.rows, dtype=torch.int64), self.device)
            input_ids = fed.ids.index_select(0, rows_t)  # (B,)
        hidden = self.model(input_ids, positions, meta)  # (T, hidden)
        if not rows:
            return hidden.new_empty((0, self.model_config.vocab_size), dtype=torch.float32)
        rows_t = torch.tensor(rows, device=self.device)
        return self.model.compute_logits(hidden[rows_t]).float()
