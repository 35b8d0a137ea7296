"""Every core op registers a Triton kernel beside its reference, and the registered callable
(which imports triton on first call) computes what the reference does."""

from __future__ import annotations

import torch
from op_tolerance import rel_err, tolerance

from core.ops import OPS, reference, register_core_kernels


def test_every_op_has_a_triton_kernel(target, paged_batch):
    device, dtype = target
    table: dict[tuple[str, str], object] = {}
    register_core_kernels(lambda op, backend, fn: table.setdefault((op, backend), fn))
    assert {op for op, backend in table if backend == "triton"} == set(OPS)
    assert all(table[(op, "torch")] is getattr(reference, op) for op in OPS)

    x = torch.randn(3, 40, device=device).to(dtype)
    w = torch.rand(40, device=device).to(dtype)
    out = table[("rms_norm", "triton")](x, w, 1e-6)
    assert rel_err(out, reference.rms_norm(x, w, 1e-6)) < tolerance(dtype)
    b = paged_batch([(11, 4), (6, 1)], 2, 1, 16, 4, device, dtype)
    out = table[("paged_attention", "triton")](b["q"], b["k_cache"], b["v_cache"], b["meta"], 0.25)
    ref = reference.paged_attention(b["q"], b["k_cache"], b["v_cache"], b["meta"], 0.25)
    assert rel_err(out, ref) < tolerance(dtype)
