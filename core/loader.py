"""Building a model's weights: from a Hugging Face checkpoint, a workspace, or at random."""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from core.checkpoint import CheckpointError, checkpoint_info, iter_tensors, read_json
from core.config import ModelConfig, QuantConfig
from core.layers.linear import Linear, WeightShapeError
from core.layers.parallel import VocabParallelEmbedding
from core.registry import Registry
from core.weight_format import CheckpointInfo, WeightFormat

WORKSPACE_FILE = "nybble_workspace.json"
WORKSPACE_WEIGHTS = "model.safetensors"


def is_workspace(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / WORKSPACE_FILE).exists()


def model_config_from_hf(base: ModelConfig, hf: dict[str, Any]) -> ModelConfig:
    """The preset ``base`` with the architecture sizes a checkpoint's config.json states."""
    rotary = hf.get("rotary") or {}
    rope_scaling = hf.get("rope_scaling") or {}
    scaling = rotary.get("type") or rope_scaling.get("type") or rope_scaling.get("rope_type")
    changes = {
        "architecture": (hf.get("architectures") or [base.architecture])[0],
        "hidden_size": hf.get("hidden_size", base.hidden_size),
        "intermediate_size": hf.get("intermediate_size", base.intermediate_size),
        "num_layers": hf.get("num_hidden_layers", base.num_layers),
        "num_heads": hf.get("num_attention_heads", base.num_heads),
        "num_kv_heads": hf.get("num_key_value_heads", base.num_kv_heads),
        "vocab_size": hf.get("vocab_size", base.vocab_size),
        "max_position_embeddings": hf.get("max_position_embeddings", base.max_position_embeddings),
        "rms_norm_eps": hf.get("rms_norm_eps", base.rms_norm_eps),
        "bias": bool(hf.get("bias", hf.get("attention_bias", base.bias))),
        "rope_base": float(rotary.get("base", hf.get("rope_theta", base.rope_base))),
        "rope_scaling": "dynamic" if scaling == "dynamic" else None,
        "rope_scaling_factor": float(rotary.get("scaling_factor", rope_scaling.get("factor", 1.0))),
        "bos_token_id": hf.get("bos_token_id", base.bos_token_id),
        "eos_token_id": hf.get("eos_token_id", base.eos_token_id),
    }
    return dataclasses.replace(base, **changes)


def resolve_format(
    quant: QuantConfig, formats: Registry, info: CheckpointInfo | None
) -> tuple[WeightFormat, dict[str, Any]]:
    """The weight format and its parameters: named by ``quant.name`` or detected."""
    if quant.name != "auto":
        fmt = formats.get(quant.name)
        params = (fmt.detect(info) if info is not None else None) or {
            "bits": quant.bits, "group_size": quant.group_size,
        }  # fmt: skip
        if info is not None and "group_size" in params and params["group_size"] != quant.group_size:
            raise CheckpointError(
                f"quant.group_size={quant.group_size} but the checkpoint has group size "
                f"{params['group_size']}; drop the override or fix it"
            )
        return fmt, params
    if info is None:
        return formats.get("none"), {}
    # quantized formats first: a quantized checkpoint also has dense .weight tensors
    for name in sorted(formats.names(), key=lambda n: n == "none"):
        params = formats.get(name).detect(info)
        if params is not None:
            return formats.get(name), params
    raise CheckpointError(
        f"no weight format recognises this checkpoint (formats: {', '.join(formats.names())}); "
        "set quant=<name> explicitly"
    )


def linear_layers(model: nn.Module) -> list[Linear]:
    return [m for m in model.modules() if isinstance(m, Linear)]


def load_hf_weights(model: nn.Module, path: Path, fmt: WeightFormat) -> None:
    """Fill ``model`` from a Hugging Face checkpoint, then repack every linear layer."""
    expected = {name for name, _ in model.named_parameters()}
    filled: set[str] = set()
    for name, tensor in iter_tensors(path):
        if fmt.skip_checkpoint_tensor(name):
            continue
        target = model.checkpoint_target(name)
        if target is None:
            continue
        module_path, param_name, shard = target
        try:
            module = model.get_submodule(module_path)
        except AttributeError:
            raise CheckpointError(
                f"{path}: tensor {name} has no place in {type(model).__name__}; is this "
                "checkpoint for another architecture or weight format (quant=)?"
            ) from None
        full = f"{module_path}.{param_name}"
        if isinstance(module, Linear):
            if not hasattr(module, param_name):
                raise CheckpointError(
                    f"{path}: tensor {name} does not fit the {fmt.name!r} weight format "
                    f"(its layers have {[n for n, _ in module.named_parameters()]}); set quant="
                )
            module.load_shard(param_name, tensor, shard, source=name)
        elif isinstance(module, VocabParallelEmbedding):
            module.load_shard(param_name, tensor, shard, source=name)
        else:
            param = getattr(module, param_name)
            if tuple(param.shape) != tuple(tensor.shape):
                raise WeightShapeError(
                    f"{name}: checkpoint shape {tuple(tensor.shape)} does not match the "
                    f"expected {tuple(param.shape)}; is model.* (sizes) right for this checkpoint?"
                )
            param.data.copy_(tensor)
        filled.add(full)
    missing = sorted(expected - filled)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{path}: missing tensors {missing[:5]}{more}")
    for layer in linear_layers(model):
        layer.linear_method.process_weights_after_loading(layer)


@torch.no_grad()
def init_random(model: nn.Module, seed: int) -> None:
    """Random weights for offline runs and benchmarks. Floats ~ N(0, 0.02) (norm weights ~1),
    integers (packed quantized weights) uniform over their range; speed does not depend on it."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dtype.is_floating_point:
            values = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                values = 1.0 + 0.1 * values
            elif name.endswith("scales"):
                values = 0.002 * values.abs() + 0.001
            else:
                values = 0.02 * values
            p.data.copy_(values.to(p.device, p.dtype))
        else:
            info = torch.iinfo(p.dtype)
            p.data.copy_(
                torch.randint(info.min, info.max, p.shape, generator=gen, dtype=torch.int64).to(
                    p.device, p.dtype
                )
            )


@torch.no_grad()
def init_dummy_on_device(model: nn.Module, seed: int) -> None:
    """Like init_random, but drawn on the model's device (20B-sized weights in seconds)."""
    for name, p in model.named_parameters():
        gen = torch.Generator(device=p.device).manual_seed(seed + zlib.crc32(name.encode()))
        if p.dtype.is_floating_point:
            p.normal_(0.0, 1.0, generator=gen)
            if name.endswith("norm.weight"):
                p.mul_(0.1).add_(1.0)
            elif name.endswith("scales"):
                p.abs_().mul_(0.002).add_(0.001)
            else:
                p.mul_(0.02)
        else:
            info = torch.iinfo(p.dtype)
            p.random_(info.min, info.max, generator=gen)


def repack_on_meta(model: nn.Module) -> None:
    """Run every linear layer's repack on the meta device to reach the final layout's shapes."""
    for layer in linear_layers(model):
        layer.linear_method.process_weights_after_loading(layer)


def _rank_slices(model: nn.Module) -> dict[str, Any]:
    """Parameter name -> the function that narrows its full tensor to this rank's slice, for
    the tensor-parallel layers (core.layers.parallel); empty at N=1."""
    slices = {}
    for prefix, module in model.named_modules():
        if hasattr(module, "narrow_full"):
            for name, _ in module.named_parameters(recurse=False):
                slices[f"{prefix}.{name}"] = (module.narrow_full, name)
    return slices


def load_workspace_weights(model: nn.Module, path: Path, device: torch.device) -> None:
    """Read a workspace's tensors (already fused and repacked) straight into ``model``.

    A workspace holds the full tensors; under tensor parallelism each rank reads them one at a
    time and keeps its slice, so one workspace serves every valid tensor_parallel_size.
    """
    slices = _rank_slices(model)
    if slices:
        with safe_open(str(path / WORKSPACE_WEIGHTS), framework="pt") as f:
            state = {}
            for name in f.keys():
                t = f.get_tensor(name)
                if name in slices:
                    narrow, param_name = slices[name]
                    t = narrow(param_name, t).to(device, copy=True)  # frees the full tensor
                state[name] = t.to(device).contiguous()
    else:
        state = load_file(str(path / WORKSPACE_WEIGHTS), device=str(device))
    own = dict(model.named_parameters())
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: workspace does not match the model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); was it written by another nybble version? convert it again"
        )
    for name, p in own.items():
        t = state[name]
        if t.dtype.is_floating_point and p.dtype.is_floating_point:
            t = t.to(p.dtype)  # a workspace stored in fp16 serves in fp32 on a CPU too
        if t.shape != p.shape or t.dtype != p.dtype:
            raise WeightShapeError(
                f"{path}: workspace tensor {name} is {tuple(t.shape)} {t.dtype}, the model "
                f"expects {tuple(p.shape)} {p.dtype}; convert the checkpoint again"
            )
        p.data = t


def read_workspace_config(path: Path) -> dict[str, Any]:
    return read_json(path / WORKSPACE_FILE)


def info_for(path: str | None) -> CheckpointInfo | None:
    return checkpoint_info(Path(path)) if path else None
