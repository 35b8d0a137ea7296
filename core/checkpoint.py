"""Reading Hugging Face checkpoints: config, tensor shapes, and tensors one by one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm import tqdm

from core.weight_format import CheckpointInfo

EXTRA_CONFIGS = ("quant_config.json", "quantize_config.json")


class CheckpointError(ValueError):
    """The checkpoint folder is missing files or holds something unexpected."""


def weight_files(path: Path) -> list[Path]:
    """The weight shards of a checkpoint folder: *.safetensors, else pytorch_model*.bin."""
    st = sorted(path.glob("*.safetensors"))
    if st:
        return st
    bins = sorted(p for p in path.glob("pytorch_model*.bin"))
    if bins:
        return bins
    raise CheckpointError(
        f"{path}: no *.safetensors or pytorch_model*.bin files; point model.path= at a Hugging "
        "Face model folder or a workspace written by nybble-convert"
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; is model.path the model's folder?") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)


def checkpoint_info(path: Path) -> CheckpointInfo:
    """config.json, extra quantization configs, and every tensor's shape (no tensor data read)."""
    hf_config = read_json(path / "config.json")
    extras = {n: read_json(path / n) for n in EXTRA_CONFIGS if (path / n).exists()}
    shapes: dict[str, tuple[int, ...]] = {}
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        else:
            for name, t in _load_bin(file).items():
                shapes[name] = tuple(t.shape)
    return CheckpointInfo(hf_config=hf_config, tensor_shapes=shapes, extra_configs=extras)


def iter_tensors(path: Path, desc: str = "loading weights") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of every shard, with a progress bar over tensors."""
    files = weight_files(path)
    total = len(checkpoint_info(path).tensor_shapes) if len(files) > 1 else None
    with tqdm(total=total, desc=desc, unit="tensor", leave=False) as bar:
        for file in files:
            if file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as f:
                    if bar.total is None:
                        bar.total = len(f.keys())
                    for name in f.keys():
                        yield name, f.get_tensor(name)
                        bar.update()
            else:
                tensors = _load_bin(file)
                if bar.total is None:
                    bar.total = len(tensors)
                for name, t in tensors.items():
                    yield name, t
                    bar.update()
