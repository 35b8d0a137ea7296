"""nybble-convert: workspaces load without repacking and serve exactly like the checkpoint."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from core.checkpoint import CheckpointError
from core.compose import ConvertConfig
from core.convert import convert
from core.loader import WORKSPACE_FILE
from core.model_runner import ModelRunner
from core.plugins import get_registries
from tests.awq_checkpoint import write_awq_checkpoint
from tests.conftest import tiny_config, tiny_model_config, write_llama_checkpoint
from tests.plugins.models.internlm.test_model_vs_llama import run_prefill_logits

SIZES = dict(hidden_size=128, intermediate_size=256)
PROMPTS = [[3, 14, 15, 92, 65], list(range(40, 77))]


def convert_cfg(src, out, **model) -> ConvertConfig:
    """fp32 workspaces, so they can be compared exactly with the fp32 CPU load."""
    cfg = ConvertConfig(model=tiny_model_config(path=str(src), **SIZES, **model), output=str(out))
    cfg.engine.dtype = "float32"
    return cfg


def runner_for(path, **model):
    return ModelRunner(
        tiny_config(tiny_model_config(path=str(path), **SIZES, **model)), get_registries()
    )


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("kind", ["dense", "awq"])
def test_workspace_serves_exactly_like_its_checkpoint_and_converts_reproducibly(tmp_path, kind):
    src = tmp_path / "hf"
    write_llama_checkpoint(src, bias=False, **SIZES)
    if kind == "awq":
        src = write_awq_checkpoint(src, tmp_path / "awq", group_size=64)
    ws = convert(convert_cfg(src, tmp_path / "ws"))
    meta = json.loads((ws / WORKSPACE_FILE).read_text())
    assert meta["format"] == ("awq" if kind == "awq" else "none")
    assert meta["model"]["hidden_size"] == 128
    direct = run_prefill_logits(runner_for(src), PROMPTS)
    served = run_prefill_logits(runner_for(ws), PROMPTS)
    for a, b in zip(direct, served):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    again = convert(convert_cfg(src, tmp_path / "ws2"))
    assert digest(ws) == digest(again)


def test_workspace_load_does_no_repacking(tmp_path, monkeypatch):
    write_llama_checkpoint(tmp_path / "hf", bias=False, **SIZES)
    src = write_awq_checkpoint(tmp_path / "hf", tmp_path / "awq", 64)
    ws = convert(convert_cfg(src, tmp_path / "ws"))
    from plugins.awq import format as awq_format

    def no_repack(*a, **k):
        raise AssertionError("a workspace load repacked real tensors")

    # the repack runs on meta tensors only: patch the data-touching packer to fail on real ones
    real = awq_format.repack_qweight
    monkeypatch.setattr(
        awq_format, "repack_qweight", lambda t: real(t) if t.is_meta else no_repack()
    )
    runner_for(ws)


def test_convert_refuses_to_clobber_a_folder(tmp_path):
    write_llama_checkpoint(tmp_path / "hf", bias=False, **SIZES)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):
        convert(convert_cfg(tmp_path / "hf", tmp_path / "out"))
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
