"""Programmatic dependent launch is a GPU launch option: never used for CPU tensors, whatever
``engine.pdl`` says; tests/test_gpu_engine.py checks on a GPU that the setting reaches the
launches and changes no token or logprob."""

from __future__ import annotations

import torch

from core.config import EngineConfig
from core.ops import pdl


def test_pdl_is_on_by_default():
    assert EngineConfig().pdl is True


def test_cpu_launches_never_use_pdl_and_the_two_flags_agree():
    pdl.set_pdl(True)
    try:
        assert not pdl.use_pdl(torch.zeros(2))
        assert pdl.pdl_launch(torch.zeros(2)) == {"USE_PDL": False, "launch_pdl": False}
    finally:
        pdl.set_pdl(EngineConfig().pdl)
