"""Builds AWQ checkpoints from a dense tiny checkpoint (for loading and convert tests)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from plugins.awq.quantize import quantize_awq

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_awq_checkpoint(dense: Path, out: Path, group_size: int, layout: str = "autoawq") -> Path:
    """Quantize every projection of ``dense`` (round to nearest) into ``out``.

    layout "autoawq": config.json carries quantization_config; "lmdeploy": the same tensors and
    no quantization config (as ``lmdeploy lite auto_awq`` writes them).
    """
    out.mkdir(parents=True, exist_ok=True)
    (file,) = dense.glob("*.safetensors")
    state = load_file(str(file))
    quantized = {}
    for name, t in state.items():
        module, _, kind = name.rpartition(".")
        if kind == "weight" and module.rsplit(".", 1)[-1] in PROJECTIONS:
            qweight, qzeros, scales = quantize_awq(t.float(), group_size)
            quantized[f"{module}.qweight"] = qweight
            quantized[f"{module}.qzeros"] = qzeros
            quantized[f"{module}.scales"] = scales
        else:
            quantized[name] = t.half()
    save_file(quantized, str(out / "model.safetensors"), metadata={"format": "pt"})
    hf = json.loads((dense / "config.json").read_text())
    if layout == "autoawq":
        hf["quantization_config"] = {
            "quant_method": "awq", "version": "gemm", "bits": 4,
            "group_size": group_size, "zero_point": True,
        }  # fmt: skip
    (out / "config.json").write_text(json.dumps(hf))
    if (dense / "tokenizer.model").exists():
        shutil.copyfile(dense / "tokenizer.model", out / "tokenizer.model")
    return out


def dequantized_state(awq: Path, group_size: int) -> dict[str, torch.Tensor]:
    """The dense weights an AWQ checkpoint stands for (for an independent reference)."""
    from plugins.awq.reference import dequantize_awq

    state = load_file(str(awq / "model.safetensors"))
    dense = {}
    for name, t in state.items():
        if name.endswith(".qweight"):
            m = name[: -len(".qweight")]
            w = dequantize_awq(
                t, state[f"{m}.qzeros"], state[f"{m}.scales"], group_size
            )  # [in, out]
            dense[f"{m}.weight"] = w.t().float()
        elif not name.endswith((".qzeros", ".scales")):
            dense[name] = t.float()
    return dense
