"""Model ops by name: torch references (every op) and Triton kernels (where speed matters)."""

from __future__ import annotations

from core.ops import reference

OPS = ("rms_norm", "add_rms_norm", "rotary", "silu_mul", "store_kv", "paged_attention")


def register_core_kernels(register) -> None:
    for op in OPS:
        register(op, "torch", getattr(reference, op))
