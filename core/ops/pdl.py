"""Programmatic dependent launch (PDL): whether nybble's Triton kernels launch with it.

On Hopper and newer GPUs a kernel launched with PDL may start while the kernel before it on the
stream is still running (CUDA programming guide, "Programmatic Dependent Launch"). Every Triton
kernel of nybble takes a ``USE_PDL`` flag (core/ops/triton_pdl.py): with it, each program waits
for the previous kernel to finish (and its writes to be visible) before it reads anything another
kernel wrote or writes anything at all, and releases the next kernel: the small kernels at their
start, the decode GEMV and tensor-core GEMM after their main loop (released at the start, a chain
of GEMVs crowded the SMs with waiting programs and ran 5% slower on an H200). What comes before
the wait overlaps the previous kernel's tail: the launch itself for every kernel, and for the
GEMV (plugins/awq/gemv.py) the loads of its first weight tile, which no kernel writes.
Kernels launched without PDL (cuBLAS, torch's own) keep the stream's usual full ordering.

``engine.pdl`` switches it (ModelRunner calls :func:`set_pdl`); it only takes effect on compiled
CUDA kernels of a device of compute capability 9.0 or more, never under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import functools
import os

import torch

_enabled = True


def set_pdl(enabled: bool) -> None:
    """Turn PDL launches on or off for every kernel launched from now on (this process)."""
    global _enabled
    _enabled = bool(enabled)


@functools.cache
def _device_supports(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def use_pdl(t: torch.Tensor) -> bool:
    """Whether a kernel over ``t``'s device launches with PDL (and its programs wait on the GPU)."""
    if not _enabled or t.device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    return _device_supports(t.device.index if t.device.index is not None else 0)


def pdl_launch(t: torch.Tensor) -> dict[str, bool]:
    """Launch keywords of a nybble Triton kernel over ``t``: its ``USE_PDL`` flag and Triton's
    ``launch_pdl``, which must agree (a PDL launch whose programs never wait would race)."""
    on = use_pdl(t)
    return {"USE_PDL": on, "launch_pdl": on}
