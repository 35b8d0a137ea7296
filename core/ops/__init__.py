"""Model ops by name: torch references (every op) and Triton kernels (where speed matters).

The Triton modules are imported on an op's first call, not here: this package (and the plugin
manager that registers it) then loads on any machine, and a test that sets ``TRITON_INTERPRET=1``
before the first call gets interpreted kernels even if ``core.ops`` was imported earlier
(Triton reads that variable when a kernel module is imported).
"""

from __future__ import annotations

from core.fragment_order import writes_fragment_order
from core.ops import reference
from core.partial_sums import adds_partial_sums

OPS = (
    "rms_norm",
    "add_rms_norm",
    "rotary",
    "rotary_store_kv",
    "silu_mul",
    "store_kv",
    "paged_attention",
    "rope_paged_attention",
)


@writes_fragment_order  # for a tensor-core GEMV (core/fragment_order.py)
@adds_partial_sums  # x may be a GEMM's split-K partial sums (core/partial_sums.py)
def rms_norm_triton(x, weight, eps, fragment=False):
    from core.ops.triton_norm import rms_norm

    return rms_norm(x, weight, eps, fragment)


@writes_fragment_order
@adds_partial_sums
def add_rms_norm_triton(x, residual, weight, eps, fragment=False):
    from core.ops.triton_norm import add_rms_norm

    return add_rms_norm(x, residual, weight, eps, fragment)


def rotary_triton(q, k, cos, sin):
    from core.ops.triton_rotary import rotary

    return rotary(q, k, cos, sin)


@adds_partial_sums  # x may be a GEMM's split-K partial sums (core/partial_sums.py)
def rotary_store_kv_triton(q, k, v, cos, sin, k_cache, v_cache, slot_mapping):
    from core.ops.triton_rotary import rotary_store_kv

    return rotary_store_kv(q, k, v, cos, sin, k_cache, v_cache, slot_mapping)


@writes_fragment_order
@adds_partial_sums
def silu_mul_triton(x, fragment=False):
    from core.ops.triton_activation import silu_mul

    return silu_mul(x, fragment)


def store_kv_triton(k, v, k_cache, v_cache, slot_mapping):
    from core.ops.triton_kv_cache import store_kv

    return store_kv(k, v, k_cache, v_cache, slot_mapping)


def paged_attention_triton(q, k_cache, v_cache, meta, scale):
    from core.ops.triton_attention import paged_attention

    return paged_attention(q, k_cache, v_cache, meta, scale)


@adds_partial_sums  # q, k, v may be a GEMM's split-K partial sums (core/partial_sums.py)
def rope_paged_attention_triton(q, k, v, cos, sin, k_cache, v_cache, meta, scale):
    from core.ops.triton_attention import rope_paged_attention

    return rope_paged_attention(q, k, v, cos, sin, k_cache, v_cache, meta, scale)


TRITON_OPS = {
    "rms_norm": rms_norm_triton,
    "add_rms_norm": add_rms_norm_triton,
    "rotary": rotary_triton,
    "rotary_store_kv": rotary_store_kv_triton,
    "silu_mul": silu_mul_triton,
    "store_kv": store_kv_triton,
    "paged_attention": paged_attention_triton,
    "rope_paged_attention": rope_paged_attention_triton,
}


def register_core_kernels(register) -> None:
    for op in OPS:
        register(op, "torch", getattr(reference, op))
        register(op, "triton", TRITON_OPS[op])
