"""Core's own plugin: the dense weight format and the torch/Triton kernels of the model ops."""

from __future__ import annotations

from core.formats.dense import DenseFormat
from core.hookspecs import hookimpl


@hookimpl
def register_weight_formats(register):
    register(DenseFormat())


@hookimpl
def register_kernels(register):
    from core.ops import register_core_kernels

    register_core_kernels(register)
