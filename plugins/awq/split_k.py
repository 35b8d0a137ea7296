"""Deterministic split-K: the partial sums of an output tile meet in a fixed order.

With split-K, several programs each sum a share of K for the same output tile. Adding their
fp16 (or fp32) partials with atomics makes the result depend on the order the programs finish:
two runs of the same batch can differ in the last bits, and the output has to be zeroed first
(one memset launch per GEMM). Instead each split stores its fp32 partial sums to a workspace slot
and counts its arrival on the tile's int32 counter (acq_rel, GPU scope); the split that arrives
last adds every slot in split order, writes the output and puts the counter back to 0. So a
launch gives the same bits every run and needs no zeroed output; the counters live in one
per-device buffer that outlives every launch, so a CUDA-graph replay needs no memset either.

Used by the tensor-core GEMV (plugins/awq/mma_gemv.py; split index: grid axis 1), where it
measured the same speed as fp16 atomics into a zeroed output. The tl.dot paths of decode batches
17-64 keep fp16 atomics: with this reduction their 32 x 64 fp32 partial tiles made the batch-32
decode graph 17.61 -> 18.65 ms on an H200 (bench/results/decode_profile-h200-b32-split-k.log).

With kernels.split_k_sum=consumer (the default; core/partial_sums.py) none of this runs: every
path's splits store their fp32 partial sums per split and the next op adds them, in split order
(``atomic_split_output`` / ``launch_result`` below for the paths that would use atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from core.partial_sums import PartialSums

MAX_TILES = 1 << 16  # counters in the per-device buffer: output tiles of one launch, at most
_buffers: dict[tuple[str, int | None], torch.Tensor] = {}


def arrival_counters(device: torch.device, tiles: int) -> torch.Tensor:
    """The per-device int32 counters (all 0 between launches), enough for ``tiles`` tiles."""
    assert tiles <= MAX_TILES, f"{tiles} output tiles: at most {MAX_TILES} per split-K launch"
    key = (device.type, device.index)
    if key not in _buffers:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "the first split-K launch on a device is being captured in a CUDA graph; run "
                "it once before capturing (as the engine's warm-up does)"
            )
        _buffers[key] = torch.zeros(MAX_TILES, dtype=torch.int32, device=device)
    return _buffers[key]


@triton.jit
def arrive(acc, ws_ptr, cnt_ptr, tile_id, n_tiles, lin, TILE: tl.constexpr):
    """Store this split's fp32 partial sums (``lin``: each element's offset in the tile) and
    count its arrival; True in the split that arrived last."""
    split = tl.program_id(1)
    tl.store(ws_ptr + (split * n_tiles + tile_id) * TILE + lin, acc)
    tl.debug_barrier()  # every thread's partial sums are written before the arrival
    arrived = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel", scope="gpu")
    return arrived == tl.num_programs(1) - 1


@triton.jit
def sum_splits(acc, ws_ptr, cnt_ptr, tile_id, n_tiles, lin, TILE: tl.constexpr):
    """Every split's partial sums of the tile, added in split order (the same bits every run),
    read from L2 where the other programs wrote them; resets the tile's counter."""
    total = tl.zeros_like(acc)
    for k in range(0, tl.num_programs(1)):
        total += tl.load(ws_ptr + (k * n_tiles + tile_id) * TILE + lin, cache_modifier=".cg")
    tl.atomic_xchg(cnt_ptr + tile_id, 0)  # every split of this tile has arrived
    return total


def atomic_split_output(m: int, n: int, split_k: int, partial: bool, device: torch.device):
    """The output of a launch whose splits add fp16 partials into y with atomics (the CUDA-core
    GEMV, the tl.dot paths): y [M, N] fp16, zeroed where split_k > 1; with ``partial`` (and
    split_k > 1) each split's fp32 partial sums [S, M, N] instead (core/partial_sums.py). The
    launch writes y's rows ``stride(-2)`` apart; :func:`launch_result` is what it returns."""
    if partial and split_k > 1:
        return torch.empty((split_k, m, n), dtype=torch.float32, device=device)
    return (torch.zeros if split_k > 1 else torch.empty)((m, n), dtype=torch.float16, device=device)


def launch_result(y: torch.Tensor) -> torch.Tensor | PartialSums:
    """y, or the partial sums :func:`atomic_split_output` made in its place."""
    return PartialSums(y, torch.float16) if y.dim() == 3 else y
