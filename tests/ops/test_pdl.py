"""Programmatic dependent launch is a GPU launch option: never used for CPU tensors or under the
Triton interpreter, whatever ``engine.pdl`` says (tests/test_gpu_engine.py checks it on a GPU)."""

from __future__ import annotations

import torch

from core.config import EngineConfig
from core.ops import pdl


def test_cpu_tensors_never_launch_with_pdl(monkeypatch):
    monkeypatch.setattr(pdl, "_enabled", True)
    assert not pdl.use_pdl(torch.zeros(2))


def test_pdl_is_on_by_default_and_set_pdl_switches_it(monkeypatch):
    monkeypatch.setattr(pdl, "_enabled", True)
    assert EngineConfig().pdl is True
    pdl.set_pdl(False)
    assert pdl._enabled is False
    pdl.set_pdl(True)
    assert pdl._enabled is True
