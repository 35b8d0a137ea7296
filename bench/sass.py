"""The machine code of the decode W4A16 kernels, compiled for Hopper on any machine (no GPU).

    PYTHONPATH=. python bench/sass.py [--ms 1,16] [--shapes qkv,down]

For each internlm-chat-20b shape and batch size M, the configuration ``default_config`` picks is
compiled for sm_90 with Triton (as the runtime would specialize it: 16-byte aligned pointers,
sizes divisible by 16), disassembled with the ``cuobjdump`` that Triton's wheel carries, and its
main loop (the longest backward branch) summarized: instructions, instructions per int32 of
weights (8 int4 values), the commonest opcodes and the widest weight load. Timings need a GPU
(bench/gemv_graph.py); this says what each loop iteration costs in issue slots, which is what
bench/results/ncu-decode-gemm-h200.md found the decode kernels bound by, and whether a change
reached the machine code (16-byte loads, no shared-memory round trip, fewer moves).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from bench.kernels import GROUP, SHAPES
from plugins.awq import dot_gemm
from plugins.awq import gemv as gemv_module
from plugins.awq import kernels as awq_kernels
from plugins.awq import mma_gemv as mma_module

HOPPER = GPUTarget("cuda", 90, 32)
# runtime argument names -> Triton types; every one is specialized as divisible by 16 (pointers
# 16-byte aligned, N, K and strides multiples of 16), as the launcher does for these shapes
_ARGS = {
    "x_ptr": "*fp16", "qw_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*i32", "y_ptr": "*fp16",
    "ws_ptr": "*fp32", "cnt_ptr": "*i32",
    "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_ym": "i32",
}  # fmt: skip
_LINE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


@dataclass
class LoopReport:
    """The main loop of one compiled kernel."""

    instructions: int
    int32_per_thread: float  # weight int32s each thread handles per loop iteration
    opcodes: Counter
    weight_load: str  # the widest global load in the loop, e.g. LDG.E.128 (16 bytes)

    @property
    def per_int32(self) -> float:
        return self.instructions / self.int32_per_thread

    @property
    def mma(self) -> int:
        """Tensor-core instructions (mma.sync or wgmma) in the loop."""
        return self.opcodes["HMMA"] + self.opcodes["HGMMA"]


def cuobjdump() -> Path:
    """The cuobjdump of Triton's NVIDIA backend."""
    import triton.backends.nvidia as nvidia

    return Path(nvidia.__file__).parent / "bin" / "cuobjdump"


def compile_sass(fn, constexprs: dict, num_warps: int, num_stages: int = 3) -> str:
    """SASS text of ``fn`` (one of the W4A16 kernels) compiled for sm_90."""
    names = fn.arg_names
    signature = {n: _ARGS.get(n, "constexpr") for n in names}
    given = {n: v for n, v in constexprs.items() if n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in _ARGS}
    src = ASTSource(fn, signature, constexprs=given, attrs=attrs)
    kernel = triton.compile(
        src, target=HOPPER, options={"num_warps": num_warps, "num_stages": num_stages}
    )
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        out = subprocess.run(
            [str(cuobjdump()), "-sass", str(cubin)], capture_output=True, text=True, check=True
        )
    return out.stdout


def main_loop(sass: str, int32_per_thread: float) -> LoopReport:
    """Summarize the longest loop (backward branch) of a SASS listing."""
    ops = [(int(m[1], 16), m[2], m[3]) for m in _LINE.finditer(sass)]
    best = None
    for addr, op, rest in ops:
        target = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if target and int(target[1], 16) < addr:
            body = [(o, r) for a, o, r in ops if int(target[1], 16) <= a <= addr]
            if best is None or len(body) > len(best):
                best = body
    if best is None:
        raise ValueError("no loop (backward branch) in this kernel's SASS")
    loads = sorted((o for o, _ in best if o.startswith("LDG")), key=_load_bits)
    return LoopReport(
        instructions=len(best),
        int32_per_thread=int32_per_thread,
        opcodes=Counter(o.split(".")[0] for o, _ in best),
        weight_load=loads[-1] if loads else "none",
    )


def _load_bits(op: str) -> int:
    widths = [int(w) for w in re.findall(r"\.(\d+)", op)]
    return max(widths) if widths else 32


def report(m: int, n: int, k: int) -> tuple[awq_kernels.Config, LoopReport]:
    """Compile the default configuration of an [M, K] x [K, N] decode product and summarize it."""
    cfg = awq_kernels.default_config(m, n, k)
    if cfg.path == "gemv":
        fn = gemv_module._awq_gemv_kernel
        consts = dict(GROUP=GROUP, BLOCK_M=gemv_module.gemv_block_m(m), BLOCK_N=cfg.block_n, UNROLL=cfg.unroll,
                      SPLIT_K=cfg.split_k, ASM=True, PREFETCH=cfg.prefetch, USE_PDL=True)  # fmt: skip
    elif cfg.path == "mma":
        fn = mma_module._awq_mma_gemv_kernel
        tiles = cfg.block_n // 16
        consts = dict(TILES=tiles, TPW=tiles // cfg.num_warps, XB=8 if m <= 8 else 16,
                      SPLIT=cfg.split_k > 1, ASM=True, UNROLL=cfg.unroll, PREFETCH=cfg.prefetch,
                      USE_PDL=True, BATCH_BLOCKS=-(-m // mma_module.MMA_MAX_M))  # fmt: skip
    elif cfg.path in dot_gemm.MODES:
        fn = dot_gemm._awq_gemm_kernel
        split_k, unroll = dot_gemm.gemm_split(cfg, k)
        consts = dict(GROUP=GROUP, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, GROUP_M=cfg.group_m,
                      MODE=dot_gemm.MODES[cfg.path], UNROLL=unroll, SPLIT_K=split_k,
                      USE_PDL=True)  # fmt: skip
    else:
        raise ValueError(f"M={m}: path {cfg.path!r} is not a decode kernel")
    sass = compile_sass(fn, consts, cfg.num_warps, cfg.num_stages)
    per_thread = cfg.block_n * consts["UNROLL"] * 16 / (32 * cfg.num_warps)  # int32 per lane
    return cfg, main_loop(sass, per_thread)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", default="1,16", help="batch sizes, comma-separated")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="of " + ", ".join(SHAPES))
    args = parser.parse_args()
    print(f"triton {triton.__version__}, sm_90, group size {GROUP}")
    for m in (int(v) for v in args.ms.split(",")):
        for name in args.shapes.split(","):
            k, sizes = SHAPES[name]
            cfg, rep = report(m, sum(sizes), k)
            top = ", ".join(f"{o} {c}" for o, c in rep.opcodes.most_common(8))
            print(f"M={m:<3d} {name:8s} {cfg.path:6s} loop {rep.instructions:5d} instr, "
                  f"{rep.per_int32:5.1f} per int32, weight load {rep.weight_load}, mma {rep.mma} | {top}")  # fmt: skip


if __name__ == "__main__":
    main()
