"""Built-in plugin: the AWQ int4 weight format and its ``awq_gemm`` kernels."""

from __future__ import annotations

from core.hookspecs import hookimpl
from plugins.awq.format import AWQFormat
from plugins.awq.reference import awq_gemm_torch


@hookimpl
def register_weight_formats(register):
    register(AWQFormat())


def awq_gemm_triton(x, qweight, scales, qzeros, group_size, partial=False):
    """Triton ``awq_gemm``; triton is imported on first call so this module loads anywhere.
    ``partial``: split-K launches may return their partial sums unadded (core/partial_sums.py)."""
    from plugins.awq.kernels import awq_gemm

    return awq_gemm(x, qweight, scales, qzeros, group_size, partial=partial)


def _takes_fragment_order(m, n, k, group_size, device):
    from plugins.awq.kernels import takes_fragment_order

    return takes_fragment_order(m, n, k, group_size, device)


# x may come in fragment order (core/fragment_order.py) where the tensor-core GEMV runs
awq_gemm_triton.takes_fragment_order = _takes_fragment_order


@hookimpl
def register_kernels(register):
    register("awq_gemm", "torch", awq_gemm_torch)
    register("awq_gemm", "triton", awq_gemm_triton)
