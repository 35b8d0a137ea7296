"""The inline PTX of the tensor-core GEMV (plugins/awq/mma_gemv.py), the register layout it
assumes of its operands, and the GPUs it runs on (``mma_supported``).

The PTX is per lane: it names each of the lane's tensor elements by its position in the lane's
registers, and runs ``mma.sync``, whose fragments belong to fixed lanes. So it is only right for
one layout of the kernel's [8, TILES, 2, 16] tensors (mma_gemv.py's docstring derives it), which
Triton chooses itself: ``mma_layout_ok`` reads a compiled kernel's TTGIR to check it got that
one, and mma_gemv.py refuses to launch a variant that did not (``MmaLayoutError``).
"""

from __future__ import annotations

import functools
import re

import torch
import triton.language as tl

from plugins.awq.gemv import use_inline_asm


def mma_ptx(n_tiles: int, tpw: int) -> str:
    """PTX of one chunk for one lane: per 16-row tile it holds (tpw of them), dequantize 8 int32,
    run the 8 K tiles of the chunk through mma (n_tiles n8 tiles each), scale into the sums.

    Operands, by the lane's elements e = j + 4 a + 4 tpw h (column 4t + j of row g + 8h of its
    tile a; pack = 8 tpw): accumulators out, accumulators in, q (int32 each), then as half2 of
    two elements: scale, 1024 + zero, -(64 + zero), and x of K tiles 0..7 (x is the same for
    every tile: tile 0's registers are used).
    """
    e = 8 * tpw  # elements per lane
    acc_in, q, sc, zz, nz = e, 2 * e, 3 * e, 3 * e + e // 2, 4 * e
    x0 = 4 * e + e // 2

    def el(a: int, h: int, j: int) -> int:
        return j + 4 * a + 4 * tpw * h

    lines = [
        "{",
        ".reg .b32 pb0, pb1, pb2, pb3, w0, w1, w2, w3, inv16;",
        ".reg .b16 l16, h16;",
        "mov.b32 inv16, 0x2C002C00;",
    ]  # fmt: skip  (half2 1/16)
    mma = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"
    for a in range(tpw):
        d = [f"d{a}_{i}" for i in range(8)]
        lines.append(f".reg .f32 {', '.join(d)}, sg{a}, sh{a};")
        lines += [f"mov.f32 {d[i]}, 0f00000000;" for i in range(4 * n_tiles)]
        # column pairs: row g (4t, 4t+1), (4t+2, 4t+3), then row g + 8 likewise
        pairs = [(el(a, h, j), el(a, h, j + 1)) for h in (0, 1) for j in (0, 2)]
        zrow = [zz + el(a, h, 0) // 2 for h in (0, 0, 1, 1)]
        nzrow = [nz + el(a, h, 0) // 2 for h in (0, 0, 1, 1)]
        for p in range(8):
            r = p // 2  # byte r of each column holds slots 2r, 2r + 1
            sel = f"0x{4 + r}{4 + r}{r}{r}"  # halves: byte r of the first column, then the second
            for i, (c0, c1) in enumerate(pairs):
                if p % 2 == 0:
                    lines.append(f"prmt.b32 pb{i}, ${q + c0}, ${q + c1}, {sel};")
                    lines.append(f"lop3.b32 w{i}, pb{i}, 0x000F000F, 0x64006400, 0xEA;")
                    lines.append(f"sub.rn.f16x2 w{i}, w{i}, ${zrow[i]};")
                else:  # 1024 + 16 q: / 16 and - (64 + z) in one exact fma
                    lines.append(f"lop3.b32 w{i}, pb{i}, 0x00F000F0, 0x64006400, 0xEA;")
                    lines.append(f"fma.rn.f16x2 w{i}, w{i}, inv16, ${nzrow[i]};")
            xb = x0 + p * (e // 2)  # tile 0's x registers: batch row g (2), then g + 8 (2)
            xg, xh = xb, xb + el(0, 1, 0) // 2
            # A rows g, g + 8 at logical k (2t, 2t+1) = columns (4t, 4t+1), k + 8 = (4t+2, 4t+3)
            lines.append(f"{mma} {{{', '.join(d[:4])}}}, {{w0, w2, w1, w3}}, {{${xg}, ${xg + 1}}}, {{{', '.join(d[:4])}}};")  # fmt: skip
            if n_tiles == 2:
                lines.append(f"{mma} {{{', '.join(d[4:])}}}, {{w0, w2, w1, w3}}, {{${xh}, ${xh + 1}}}, {{{', '.join(d[4:])}}};")  # fmt: skip
        lines += [
            f"mov.b32 {{l16, h16}}, ${sc + el(a, 0, 0) // 2};",
            f"cvt.f32.f16 sg{a}, l16;",
            f"mov.b32 {{l16, h16}}, ${sc + el(a, 1, 0) // 2};",
            f"cvt.f32.f16 sh{a}, l16;",
        ]
        # row g: batch 2t, 2t+1 (d0, d1), 8+2t, 9+2t (d4, d5); row g + 8: d2, d3, d6, d7
        for h, order in ((0, (0, 1, 4, 5)), (1, (2, 3, 6, 7))):
            for j, i in enumerate(order):
                out = el(a, h, j)
                if n_tiles == 1 and i >= 4:
                    lines.append(f"mov.b32 ${out}, ${acc_in + out};")  # batch rows 8..15: none
                else:
                    lines.append(f"fma.rn.f32 ${out}, {d[i]}, {'sh' if h else 'sg'}{a}, ${acc_in + out};")  # fmt: skip
    lines.append("}")
    return "\n".join(lines)


def constraints(tpw: int) -> str:
    return ",".join(["=r"] * 8 * tpw + ["r"] * 60 * tpw)


PTX_N8_1 = tl.constexpr(mma_ptx(1, 1))
PTX_N16_1 = tl.constexpr(mma_ptx(2, 1))
PTX_N8_2 = tl.constexpr(mma_ptx(1, 2))
PTX_N16_2 = tl.constexpr(mma_ptx(2, 2))
PTX_N8_4 = tl.constexpr(mma_ptx(1, 4))
PTX_N16_4 = tl.constexpr(mma_ptx(2, 4))
CONSTRAINTS_1 = tl.constexpr(constraints(1))
CONSTRAINTS_2 = tl.constexpr(constraints(2))
CONSTRAINTS_4 = tl.constexpr(constraints(4))


@functools.cache
def _has_mma(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 0)


def mma_supported(device: torch.device) -> bool:
    """Whether the tensor-core GEMV (plugins/awq/mma_gemv.py) runs on ``device``: mma.sync m16n8k16 needs compute capability 8.0
    (Ampere) or newer; on the CPU the interpreter runs its plain-Triton twin."""
    if device.type != "cuda" or not use_inline_asm(device):
        return True
    return _has_mma(device.index if device.index is not None else torch.cuda.current_device())


class MmaLayoutError(RuntimeError):
    """This Triton lays the kernel's tensors out otherwise than its PTX assumes (checked before
    the first launch of each variant, so no wrong result is ever computed)."""


_ENCODING = re.compile(r"^(#[\w]+) = #ttg\.blocked<\{(.*)\}>", re.M)
_ASM_RESULT = re.compile(
    r"tt\.elementwise_inline_asm .*packed_element = \d+ .*-> tensor<[^,]+, (#[\w]+)>"
)


def mma_layout_ok(ttgir: str, num_warps: int) -> bool:
    """Whether the mma inline asm's operands in a compiled kernel have the layout the PTX needs:
    lane 4 g + t owns columns 4t..4t+3 of rows g, warps split the tiles, and a lane's registers
    run over columns, then its tiles, then the half h (row g + 8)."""
    encodings = dict(_ENCODING.findall(ttgir))
    found = _ASM_RESULT.findall(ttgir)
    want = (
        "sizePerThread = [1, 1, 1, 4], threadsPerWarp = [8, 1, 1, 4], "
        f"warpsPerCTA = [1, {num_warps}, 1, 1], order = [3, 0, 1, 2]"
    )
    return bool(found) and all(encodings.get(e, "").startswith(want) for e in found)
