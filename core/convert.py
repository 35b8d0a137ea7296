"""nybble-convert: a checkpoint -> a workspace (resolved config, tokenizer, repacked weights)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from core.checkpoint import CheckpointError
from core.config import NybbleConfig
from core.loader import WORKSPACE_FILE, WORKSPACE_WEIGHTS, is_workspace
from core.model_builder import load_model
from core.model_runner import resolve_dtype
from core.plugins import Registries, get_registries

WORKSPACE_VERSION = 1
# the architecture a workspace pins; serving options (session_len, template...) stay overridable
ARCH_FIELDS = (
    "architecture", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
    "vocab_size", "max_position_embeddings", "rms_norm_eps", "bias", "rope_base", "rope_scaling",
    "rope_scaling_factor", "bos_token_id", "eos_token_id",
)  # fmt: skip


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CheckpointError(
                f"output={out} exists and is not empty; choose another folder or pass overwrite=true"
            )
        if not is_workspace(out):
            raise CheckpointError(
                f"output={out} is not a nybble workspace; refusing to overwrite it, choose an "
                "empty or new folder"
            )


def convert(cfg: Any, regs: Registries | None = None) -> Path:
    """Write the workspace for ``cfg.model.path`` into ``cfg.output``; returns its path.

    Runs on the CPU. Converting the same checkpoint twice gives byte-identical files.
    """
    regs = regs or get_registries()
    src = cfg.model.path
    if src is None:
        raise CheckpointError(
            "model.path is not set: nybble-convert model.path=<hf folder> output=<folder>"
        )
    if is_workspace(src):
        raise CheckpointError(
            f"model.path={src} is already a workspace; serve it with nybble model.path={src}"
        )
    out = Path(cfg.output)
    _check_output(out, getattr(cfg, "overwrite", False))
    device = torch.device("cpu")
    dtype = resolve_dtype(cfg.engine.dtype if cfg.engine.dtype != "auto" else "float16", device)
    base = NybbleConfig(
        model=cfg.model, quant=cfg.quant, kernels=dataclasses.replace(cfg.kernels, backend="torch")
    )
    loaded = load_model(base, regs, device, dtype)
    state = {}
    for name, p in tqdm(
        sorted(loaded.model.named_parameters()), desc="packing", unit="tensor", leave=False
    ):
        state[name] = p.detach().contiguous()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / WORKSPACE_WEIGHTS), metadata={"format": "pt"})
    meta = {
        "version": WORKSPACE_VERSION,
        "model": {k: getattr(loaded.model_config, k) for k in ARCH_FIELDS},
        "format": loaded.format.name,
        "format_params": loaded.format_params,
        "dtype": str(dtype).removeprefix("torch."),
    }
    (tmp / WORKSPACE_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tok = Path(cfg.model.tokenizer) if cfg.model.tokenizer else Path(src) / "tokenizer.model"
    if tok.is_file():
        shutil.copyfile(tok, tmp / "tokenizer.model")
    # replace the old workspace only once the new one is complete
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"wrote {out} ({loaded.format.name}, {len(state)} tensors)")
    return out
