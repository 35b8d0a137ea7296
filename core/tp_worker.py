"""Tensor-parallel processes: rank 0's runner, which drives the step, and the worker loop of
ranks 1..N-1.

Rank 0 is the engine's process: its scheduler and sampler decide everything, and before each
forward it broadcasts the step (the batch, pickled) so every worker runs the same forward on
its slice of the model; the collectives inside the layers (core.layers.parallel) meet there.
Workers are started with torch.multiprocessing (spawn) when engine.tensor_parallel_size > 1.
"""

from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.config import NybbleConfig
from core.distributed import destroy_group, free_port, init_group
from core.model_runner import ModelRunner, resolve_device
from core.plugins import Registries, get_registries
from core.scheduler import ScheduledBatch

log = logging.getLogger(__name__)


@dataclass
class StepSequence:
    """What a worker needs of a Sequence to run it: ModelRunner.prepare and the decode graphs
    read only these."""

    token_ids: list[int]
    num_computed_tokens: int
    block_table: list[int]

    def __len__(self) -> int:
        return len(self.token_ids)


def _step_of(batch: ScheduledBatch) -> ScheduledBatch:
    # sends each context whole (O(context) bytes a step); a worker-side token mirror updated
    # with deltas would send O(batch)
    seqs = [StepSequence(s.token_ids, s.num_computed_tokens, s.block_table) for s in batch.seqs]
    return ScheduledBatch(seqs=seqs, num_tokens=batch.num_tokens)


def _broadcast(obj: object) -> object:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def worker_main(index: int, cfg: NybbleConfig, size: int, port: int) -> None:
    """Rank ``index + 1``: build this rank's runner, then run every step rank 0 sends until it
    sends None."""
    rank = index + 1
    device = resolve_device(cfg.engine.device)
    tp = init_group(rank, size, port, device)
    try:
        runner = ModelRunner(cfg, get_registries(), tp)
        while (batch := _broadcast(None)) is not None:
            runner.execute(batch)
    finally:
        destroy_group()


class ParallelModelRunner(ModelRunner):
    """Rank 0's ModelRunner: starts the workers, and sends each step to them before running it.

    Workers build their plugins from the installed entry points (``get_registries``), not
    from ``regs``: a plugin registered only in this process is unknown to them.
    """

    def __init__(self, cfg: NybbleConfig, regs: Registries) -> None:
        size = cfg.engine.tensor_parallel_size
        device = resolve_device(cfg.engine.device)
        if device.type == "cuda" and torch.cuda.device_count() < size:
            raise RuntimeError(
                f"engine.tensor_parallel_size={size} but torch sees "
                f"{torch.cuda.device_count()} GPU(s); one process per GPU needs {size}"
            )
        port = free_port()
        ctx = mp.start_processes(
            worker_main, args=(cfg, size, port), nprocs=size - 1, join=False, daemon=True,
            start_method="spawn",
        )  # fmt: skip
        self._workers = ctx
        self._driving = False  # warm-up and graph capture run on every rank by themselves
        tp = init_group(0, size, port, device)
        try:
            super().__init__(cfg, regs, tp)  # a layout N cannot split fails here, on every rank
        except BaseException:
            for p in ctx.processes:
                p.join(timeout=30)
                if p.is_alive():
                    p.terminate()
            destroy_group()
            raise
        self._driving = True
        atexit.register(self.close)

    can_feed = False  # the workers build their inputs from the broadcast tokens

    def execute(self, batch: ScheduledBatch, fed: None = None) -> torch.Tensor:
        assert fed is None, "tensor-parallel steps take their input tokens from the host"
        if self._driving:
            _broadcast(_step_of(batch))
        return super().execute(batch)

    def close(self) -> None:
        """Stop the workers and leave the process group (the engine can be built again)."""
        if not self._driving:
            return
        self._driving = False
        atexit.unregister(self.close)
        _broadcast(None)
        for p in self._workers.processes:
            p.join(timeout=30)
        destroy_group()
