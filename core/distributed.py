"""The tensor-parallel process group: which rank this process is, and the collectives layers use.

One process per rank; rank 0 runs the Engine, ranks 1..N-1 run ``core.tp_worker``. NCCL on
GPUs, gloo on CPU. At N=1 the model is built from plain layers that never touch this module's
collectives (``core.layers.parallel`` picks them when the model is built), so a single-GPU
engine pays nothing for tensor parallelism.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# workers wait for the next step inside a broadcast, and an idle server may send none for hours
IDLE_TIMEOUT = timedelta(days=365)


class TensorParallelError(ValueError):
    """A model layout that ``engine.tensor_parallel_size`` cannot split; the message names the
    sizes and the sizes that would work."""


@dataclass(frozen=True)
class TPGroup:
    """This process's place in the tensor-parallel group (the default process group)."""

    rank: int = 0
    size: int = 1

    def split(self, total: int, what: str, multiple: int = 1) -> int:
        """``total // size``; refuse a size that leaves ranks unequal or off ``multiple``."""
        if self.size == 1:
            return total
        if total % self.size == 0 and (total // self.size) % multiple == 0:
            return total // self.size
        valid = [n for n in range(1, 17) if total % n == 0 and (total // n) % multiple == 0]
        unit = f" into parts that are multiples of {multiple}" if multiple > 1 else ""
        raise TensorParallelError(
            f"engine.tensor_parallel_size={self.size} cannot split {what}={total}{unit} "
            f"({total} / {self.size} = {total / self.size:g}); sizes that can: "
            f"{', '.join(map(str, valid))}"
        )

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` along the last dimension (rank order)."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-1)

    def min_int(self, value: int, device: torch.device) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())


SINGLE = TPGroup()


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_group(rank: int, size: int, port: int, device: torch.device) -> TPGroup:
    """Join the process group at 127.0.0.1:``port`` (one machine); pin the rank's GPU."""
    if device.type == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend_for(device),
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=size,
        timeout=IDLE_TIMEOUT,
    )
    return TPGroup(rank, size)


def destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
