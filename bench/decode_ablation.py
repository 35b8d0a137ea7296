"""nybble-bench task=decode_ablation: what each small op costs a decode step, by leaving it out.

Kernel durations from the profiler (task=decode_profile) overlap under programmatic dependent
launch, so they cannot say what a fusion would save. Here the decode CUDA graphs are captured
again with one op replaced by a shape-preserving stand-in that launches nothing (or, for
``attention``, the rotary + KV write that decode attention otherwise does itself), and the
graph's replay time is compared with the full graph's at the same batch and context: the difference is the most that
fusing the op away, or making it free, can save. The stand-ins compute nonsense (tokens are
sampled greedily so NaN logits do no harm); only the timings mean anything. CUDA only.

Ablations (per layer): ``silu_mul`` the SwiGLU launch; ``rope_store`` the rotation and the KV
write inside the decode attention launch (attention alone, over a cache without the new token);
``norm`` both RMSNorm launches (and the final norm); ``attention`` the decode attention (the
rotation and the KV write stay, in rotary_store_kv's own launch);
``split_k_sum`` the tensor-core GEMV's split-K reduction (plugins/awq/split_k.py: each split
stores its fp32 partial sums and exits, nobody adds them, y is left unwritten): the most that
adding the partials elsewhere (in the kernel that reads y) could save; it means that only with
``kernels.split_k_sum=gemm`` (under the default ``consumer`` the ops still read the partials).
The other stand-ins pass split-K partial sums on as fp16 views, launching nothing, so they
work in both modes. ``ablations=[]`` times the full graphs only: with
``kernels.split_k_sum=gemm`` and ``consumer``, that is the A/B of the two.
Writes decode_ablation-<gpu>.csv: one row per batch and ablation, with the full graph's time,
the saving per step and, where launches go away, per launch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.language as tl
from torch import nn

from bench.decode_profile import decode_to_context
from bench.graph_timing import median_replay_ms
from bench.hardware import gpu_name, gpu_slug, versions
from bench.sweep import write_csv
from core.engine import Engine
from core.layers.activation import SiluAndMul
from core.layers.attention import PagedAttention
from core.layers.rmsnorm import RMSNorm
from core.ops import reference
from core.ops.triton_pdl import pdl_release
from core.partial_sums import PartialSums, adds_partial_sums, total
from core.sampling_params import SamplingParams
from plugins.awq import mma_gemv

COLUMNS = ["split_k_sum", "batch", "context", "ablated", "graph_ms", "full_ms", "saved_ms",
           "launches_removed", "saved_us_per_launch"]  # fmt: skip


def _view(x: torch.Tensor | PartialSums) -> torch.Tensor:
    """``x``, or for split-K partial sums (kernels.split_k_sum=consumer) a same-shaped fp16 view
    of split 0's bits: a tensor a stand-in can pass on without launching anything (nonsense
    values; only timings count here)."""
    if not isinstance(x, PartialSums):
        return x
    part = x.parts[0]
    return part.view(torch.float16)[..., : part.shape[-1]]


def _halve(x: torch.Tensor | PartialSums) -> torch.Tensor:
    x = _view(x)
    return x[:, : x.shape[1] // 2]  # the gate half: [T, 2I] -> [T, I], a view, no launch


@adds_partial_sums
def _rope_store_only(q, k, v, cos, sin, k_cache, v_cache, meta, scale):
    """rope_paged_attention without the attention: the rotation and the KV write in their own
    launch (the Triton one on CUDA), the rotated q passed on."""
    if q.device.type == "cuda":
        from core.ops.triton_rotary import rotary_store_kv

        return rotary_store_kv(q, k, v, cos, sin, k_cache, v_cache, meta.slot_mapping)
    q, k, v = (total(x) for x in (q, k, v))
    return reference.rotary_store_kv(q, k, v, cos, sin, k_cache, v_cache, meta.slot_mapping)


def _stand_ins(module: nn.Module, ablation: str) -> dict[str, Callable] | None:
    """The op attributes of ``module`` that ``ablation`` replaces, with their stand-ins (each
    takes split-K partial sums as they come: no total, no launch)."""
    if ablation == "silu_mul" and isinstance(module, SiluAndMul):
        return {"_op": adds_partial_sums(_halve)}
    if ablation == "norm" and isinstance(module, RMSNorm):
        return {"_norm": adds_partial_sums(lambda x, w, eps: _view(x)),
                "_add_norm": adds_partial_sums(lambda x, res, w, eps: (_view(x), res))}  # fmt: skip
    if isinstance(module, PagedAttention):
        if ablation == "attention":  # the rotation and the KV write stay, in their own launch
            return {"_attend": lambda q, k_cache, v_cache, meta, scale: q,
                    "_rope_attend": _rope_store_only}  # fmt: skip
        if ablation == "rope_store":  # attention alone: no rotation, no KV write
            attend = module._attend
            return {"_rope_attend": adds_partial_sums(
                lambda q, k, v, cos, sin, k_cache, v_cache, meta, scale: attend(
                    _view(q), k_cache, v_cache, meta, scale))}  # fmt: skip
    return None


@triton.jit
def _partials_only_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K,
                          stride_xm, stride_ym, TILES: tl.constexpr, TPW: tl.constexpr,
                          XB: tl.constexpr, SPLIT: tl.constexpr, ASM: tl.constexpr,
                          UNROLL: tl.constexpr = 1, PREFETCH: tl.constexpr = False,
                          USE_PDL: tl.constexpr = False, PARTIAL: tl.constexpr = False,
                          BATCH_BLOCKS: tl.constexpr = 1, XFRAG: tl.constexpr = False):  # fmt: skip
    """The tensor-core GEMV (same arguments, main loop and release) with split-K programs that
    store their partial sums and exit: no arrival counter, no sum, y unwritten."""
    tl.static_assert(BATCH_BLOCKS == 1, "the split_k_sum ablation covers batches of 16 or less")
    rb, pid_k = tl.program_id(0), tl.program_id(1)
    per_split = tl.cdiv(K // 128, tl.num_programs(1))
    first = pid_k * per_split
    last = tl.minimum(first + per_split, K // 128)
    acc = mma_gemv._row_block_sums(x_ptr, qw_ptr, s_ptr, z_ptr, M, N, K, stride_xm, rb, first,
                                   last, TILES, TPW, XB, ASM, UNROLL, PREFETCH, USE_PDL,
                                   XFRAG)  # fmt: skip
    pdl_release(USE_PDL)
    if not SPLIT:
        mma_gemv._store_y(y_ptr, acc, rb, M, N, stride_ym, TILES)
    else:
        slot = (pid_k * tl.num_programs(0) + rb) * (TILES * 256)
        tl.store(ws_ptr + slot + mma_gemv._tile_index(TILES), acc)


def _swap_gemv_kernel() -> Callable[[], None]:
    """``split_k_sum``: the tensor-core GEMV launches the partials-only kernel until restored."""
    original = mma_gemv._awq_mma_gemv_kernel
    mma_gemv._awq_mma_gemv_kernel = _partials_only_kernel

    def restore() -> None:
        mma_gemv._awq_mma_gemv_kernel = original

    return restore


# ablation -> whether its stand-in removes the op's launches (rope_store leaves out work inside
# the attention launch, and split_k_sum inside the GEMV's)
ABLATIONS = {"silu_mul": True, "rope_store": False, "norm": True, "attention": True,
             "split_k_sum": False}  # fmt: skip


def ablate(model: nn.Module, ablation: str) -> Callable[[], None]:
    """Swap ``ablation``'s ops in every module of ``model`` for their stand-ins; returns the
    function that puts the originals back. Raises if the model has no such op."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}: one of {', '.join(ABLATIONS)}")
    if ablation == "split_k_sum":  # a kernel, not a module's op: every AWQ layer at once
        return _swap_gemv_kernel()
    saved: list[tuple[nn.Module, str, Callable]] = []
    for module in model.modules():
        for name, stand_in in (_stand_ins(module, ablation) or {}).items():
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, stand_in)
    if not saved:
        raise ValueError(f"the model has no {ablation} op to leave out")

    def restore() -> None:
        for module, name, original in saved:
            setattr(module, name, original)

    return restore


def launches_removed(model: nn.Module, ablation: str) -> int:
    """Kernel launches per forward that ``ablation`` takes away (one per replaced module)."""
    if not ABLATIONS[ablation]:
        return 0
    return sum(_stand_ins(m, ablation) is not None for m in model.modules())


def replay_ms(engine: Engine, batch: int, prompt: int, steps: int, seed: int) -> float:
    """Decode ``batch`` greedy requests to context prompt + steps, time that graph's replay."""
    params = SamplingParams(temperature=0.0, max_tokens=steps + 2, ignore_eos=True)
    graph = decode_to_context(engine, batch, prompt, steps, params, seed)
    ms = min(median_replay_ms(graph, 50) for _ in range(3))
    while engine.has_unfinished():
        engine.step()
    return ms


def chosen_ablations(names: list[str] | None, split_k_sum: str = "gemm") -> list[str]:
    """``ablations=``: the ones named (in order), or every one that means something under
    ``kernels.split_k_sum`` (null); an unknown or meaningless name fails before any model is
    built."""
    known = [a for a in ABLATIONS if a != "split_k_sum" or split_k_sum == "gemm"]
    if names is None:
        return known
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise SystemExit(
            f"ablations={list(names)}: unknown {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(ABLATIONS)} ([] times the full graphs only)"
        )
    if "split_k_sum" in names and "split_k_sum" not in known:
        raise SystemExit(
            f"ablations={list(names)}: split_k_sum leaves out the GEMM's own split-K reduction, "
            f"which kernels.split_k_sum={split_k_sum} does not run; add kernels.split_k_sum=gemm"
        )
    return list(names)


def run(cfg) -> list[dict]:
    if not torch.cuda.is_available() or cfg.engine.device == "cpu":
        raise SystemExit("decode_ablation times the decode CUDA graphs: it needs a CUDA GPU")
    if not cfg.engine.cuda_graphs:
        raise SystemExit(
            "decode_ablation times the decode CUDA graphs: set engine.cuda_graphs=true"
        )
    chosen = chosen_ablations(cfg.ablations, cfg.kernels.split_k_sum)
    name, out_dir = gpu_name(), Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{name} | {versions()} | kernels.split_k_sum={cfg.kernels.split_k_sum}")
    cfg.engine.max_batch_size = max(cfg.engine.max_batch_size, max(cfg.concurrency))
    engine = Engine(cfg)
    model, graphs = engine.runner.model, engine.runner.graphs
    prompt, steps = (int(v) for v in cfg.token_pairs[0])
    full = {b: replay_ms(engine, b, prompt, steps, cfg.seed) for b in cfg.concurrency}
    mode = cfg.kernels.split_k_sum
    rows = [{"split_k_sum": mode, "batch": b, "context": prompt + steps, "ablated": "none", "graph_ms": ms,
             "full_ms": ms, "saved_ms": 0.0, "launches_removed": 0,
             "saved_us_per_launch": float("nan")} for b, ms in full.items()]  # fmt: skip
    for b, ms in full.items():
        print(f"batch {b:3d} context {prompt + steps}: full graph {ms:.3f} ms", flush=True)
    for ablation in chosen:
        restore = ablate(model, ablation)
        try:
            graphs.capture()  # the same sizes again, without the op
            times = {b: replay_ms(engine, b, prompt, steps, cfg.seed) for b in cfg.concurrency}
        finally:
            restore()
        n = launches_removed(model, ablation)
        for b, ms in times.items():
            saved = full[b] - ms
            rows.append({"split_k_sum": mode, "batch": b, "context": prompt + steps, "ablated": ablation,
                         "graph_ms": ms, "full_ms": full[b], "saved_ms": saved,
                         "launches_removed": n,
                         "saved_us_per_launch": saved * 1e3 / n if n else float("nan")})  # fmt: skip
            per = f", {saved * 1e3 / n:.2f} us per launch removed ({n})" if n else ""
            print(f"batch {b:3d} context {prompt + steps}: without {ablation:9s} "
                  f"{ms:.3f} ms (full {full[b]:.3f}): {saved:+.3f} ms{per}", flush=True)  # fmt: skip
    graphs.capture()  # leave the engine as it was
    suffix = "" if mode == "gemm" else f"-{mode}"  # one file per kernels.split_k_sum
    path = out_dir / f"decode_ablation-{gpu_slug(name)}{suffix}.csv"
    write_csv(rows, COLUMNS, path)
    print(f"wrote {path}")
    return rows
