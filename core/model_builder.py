"""Builds the configured model with its weights: the one place that resolves model, format and
kernels from the registries and decides where the weights come from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.config import ModelConfig, NybbleConfig
from core.distributed import SINGLE, TPGroup
from core.kernels import KernelTable
from core.loader import (
    info_for,
    init_dummy_on_device,
    init_random,
    is_workspace,
    linear_layers,
    load_hf_weights,
    load_workspace_weights,
    model_config_from_hf,
    read_workspace_config,
    repack_on_meta,
    resolve_format,
)
from core.plugins import Registries
from core.weight_format import WEIGHT_ATTRS, WeightFormat


@dataclass
class LoadedModel:
    model: nn.Module
    model_config: ModelConfig  # preset + what the checkpoint or workspace says
    format: WeightFormat
    format_params: dict[str, Any]
    kernels: KernelTable


def load_model(
    cfg: NybbleConfig,
    regs: Registries,
    device: torch.device,
    dtype: torch.dtype,
    tp: TPGroup = SINGLE,
) -> LoadedModel:
    """The model of ``cfg.model`` on ``device``, weights in the kernels' layout.

    Weights come from a workspace (read as stored), a Hugging Face folder (loaded, fused and
    repacked), or at random: ``load_format=dummy`` or no ``model.path`` (seeded). With ``tp`` of
    size N the model is this rank's slice, narrowed from the full tensors as they are read
    (random weights are drawn per rank: they differ from the N=1 model's).
    """
    path = cfg.model.path
    workspace = is_workspace(path)
    if workspace:
        ws = read_workspace_config(Path(path))
        mc = dataclasses.replace(cfg.model, **ws["model"])
        fmt, params = regs.weight_formats.get(ws["format"]), ws["format_params"]
    else:
        info = info_for(path) if cfg.model.load_format != "dummy" else None
        mc = model_config_from_hf(cfg.model, info.hf_config) if info else cfg.model
        fmt, params = resolve_format(cfg.quant, regs.weight_formats, info)
    kernels = KernelTable(regs.kernels, cfg.kernels.backend, device, cfg.kernels.split_k_sum)
    cls = regs.models.get(mc.architecture)
    method = fmt.linear_method(params, kernels)
    build_args = (mc, method, kernels, dtype)
    build_kwargs = {"tp": tp} if tp.size > 1 else {}  # models without tensor parallelism work
    dummy = mc.load_format == "dummy" or (path is None and device.type == "cuda")
    if workspace or dummy:
        # straight to the final (repacked) layout: build on meta, repack, then allocate
        with torch.device("meta"):
            model = cls(*build_args, **build_kwargs)
        repack_on_meta(model)
        meta = {n: p for n, p in model.named_parameters()}
        model = model.to_empty(device=device)
        if tp.size > 1:  # the parallel layers narrow workspace tensors by these attributes
            _restore_weight_attrs(model, meta)
        if workspace:
            load_workspace_weights(model, Path(path), device)
        else:
            init_dummy_on_device(model, mc.seed)
    else:
        model = cls(*build_args, **build_kwargs)
        if path is None:
            init_random(model, mc.seed)
            for layer in linear_layers(model):
                layer.linear_method.process_weights_after_loading(layer)
        else:
            load_hf_weights(model, Path(path), fmt)
        model = model.to(device)
    _restore_buffers(model, device)
    model.eval()
    return LoadedModel(model, mc, fmt, params, kernels)


def _restore_weight_attrs(model: nn.Module, meta: dict[str, torch.Tensor]) -> None:
    """``to_empty`` from the meta device makes new parameters, without the split attributes."""
    for name, p in model.named_parameters():
        for attr in WEIGHT_ATTRS:
            if hasattr(meta[name], attr):
                setattr(p, attr, getattr(meta[name], attr))


def _restore_buffers(model: nn.Module, device: torch.device) -> None:
    """Non-persistent buffers (rotary exponents) are computed, not stored: a model built on the
    meta device and allocated with ``to_empty`` holds garbage there until this runs."""
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers(device)
