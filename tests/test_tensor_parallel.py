"""Tensor parallelism on the CPU (gloo): N ranks serve what one process serves.

The splitting is checked in-process (every rank's slice, from a checkpoint and from a workspace
converted once); the engine runs 2 and 4 real processes for dense and AWQ weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.block_manager import BlockManager
from core.compose import ConvertConfig
from core.convert import convert
from core.distributed import TensorParallelError, TPGroup
from core.engine import Engine
from core.model_builder import load_model
from core.plugins import get_registries
from core.sampling_params import SamplingParams
from core.scheduler import ScheduledBatch
from core.sequence import Sequence
from tests.awq_checkpoint import write_awq_checkpoint
from tests.conftest import tiny_config, tiny_model_config, write_llama_checkpoint

# AWQ shards split K in whole 128-wide kernel chunks: at N=4 a rank's o_proj input is 512/4
AWQ_SIZES = dict(hidden_size=512, intermediate_size=1024, num_heads=4)
PROMPTS = [[3, 14, 15, 92, 65, 35], list(range(40, 77)), [7]]


def sharpen(folder: Path, factor: float = 5.0) -> None:
    """Scale the projections so greedy decoding of a random model picks varied tokens (with
    N(0, 0.02) weights one token wins nearly everywhere, and equal tokens would prove little)."""
    (file,) = folder.glob("*.safetensors")
    state = load_file(str(file))
    for name, t in state.items():
        if "_proj." in name and name.endswith(".weight"):
            state[name] = t * factor
    save_file(state, str(file), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dense")
    write_llama_checkpoint(path, bias=True)  # 7b-style q/k/v/o bias: row-parallel bias too
    sharpen(path)
    return path


@pytest.fixture(scope="module")
def awq_ckpt_and_workspace(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("awq")
    write_llama_checkpoint(root / "hf", bias=False, **AWQ_SIZES)
    sharpen(root / "hf")
    awq = write_awq_checkpoint(root / "hf", root / "awq", group_size=64)
    cfg = ConvertConfig(
        model=tiny_model_config(path=str(awq), **AWQ_SIZES), output=str(root / "ws")
    )
    cfg.engine.dtype = "float32"
    return awq, convert(cfg)


def rank_state(path: Path, tp: TPGroup, **sizes) -> dict[str, torch.Tensor]:
    cfg = tiny_config(tiny_model_config(path=str(path), **sizes))
    model = load_model(cfg, get_registries(), torch.device("cpu"), torch.float32, tp).model
    return {k: v.detach() for k, v in model.state_dict().items()}


# ---- splitting, in one process ----------------------------------------------------------------
@pytest.mark.parametrize("size", [2, 4])
def test_workspace_converted_once_splits_exactly_like_the_checkpoint(awq_ckpt_and_workspace, size):
    awq, ws = awq_ckpt_and_workspace
    full = rank_state(ws, TPGroup())
    for rank in range(size):
        tp = TPGroup(rank, size)
        from_ckpt = rank_state(awq, tp, **AWQ_SIZES)
        from_ws = rank_state(ws, tp)
        assert from_ckpt.keys() == from_ws.keys() == full.keys()
        for name, t in from_ckpt.items():
            assert torch.equal(t, from_ws[name]), name
        # a rank holds 1/N of every split tensor (packed int4 and groups included)
        o = "model.layers.0.self_attn.o_proj."
        assert from_ws[o + "qweight"].shape[1] * size == full[o + "qweight"].shape[1]
        assert from_ws[o + "scales"].shape[0] * size == full[o + "scales"].shape[0]
        assert from_ws["lm_head.weight"].shape[0] * size == full["lm_head.weight"].shape[0]


def build_on_meta(size: int, quant: str, **sizes) -> None:
    cfg = tiny_config(tiny_model_config(**sizes))
    cfg.quant.name = quant
    cfg.quant.group_size = 64
    with torch.device("meta"):
        load_model(
            dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, load_format="dummy")),
            get_registries(), torch.device("meta"), torch.float16, TPGroup(0, size),
        )  # fmt: skip


@pytest.mark.parametrize(
    "size, quant, sizes, message",
    [
        (3, "none", {"vocab_size": 960}, r"size=3 cannot split model\.num_heads=4 .*: 1, 2, 4$"),
        (8, "none", {}, r"cannot split model\.num_heads=4"),
        (2, "none", {"vocab_size": 1001}, r"cannot split model\.vocab_size=1001"),
        (
            2, "awq", {"hidden_size": 128, "intermediate_size": 256},
            r"cannot split model\.hidden_size \(o_proj's input\)=128 into parts that are "
            r"multiples of 128 \(128 / 2 = 64\); sizes that can: 1$",
        ),
        (
            8, "awq", {"hidden_size": 1024, "intermediate_size": 1536, "num_heads": 8},
            r"cannot split model\.intermediate_size=1536 into parts that are multiples of 128 "
            r"\(1536 / 8 = 192\); sizes that can: 1, 2, 3, 4, 6, 12$",
        ),
    ],
)  # fmt: skip
def test_a_size_that_does_not_divide_the_layout_is_refused_with_the_sizes(
    size, quant, sizes, message
):
    with pytest.raises(TensorParallelError, match=message):
        build_on_meta(size, quant, **sizes)


# ---- real processes --------------------------------------------------------------------------
def last_logits(engine: Engine, prompts: list[list[int]]) -> torch.Tensor:
    """The last position's logits of each prompt, through the engine's runner (all ranks)."""
    runner = engine.runner
    bm = BlockManager(runner.num_blocks, runner.block_size, enable_prefix_caching=False)
    seqs = [Sequence(f"l{i}", p, SamplingParams()) for i, p in enumerate(prompts)]
    for s in seqs:
        assert bm.allocate_slots(s, len(s))
    return runner.execute(ScheduledBatch(seqs=seqs, num_tokens=[len(p) for p in prompts]))


def serve(path: Path, size: int) -> tuple[torch.Tensor, list[list[int]], list[list]]:
    """Prefill logits, greedy tokens and their logprobs from an engine with ``size`` ranks."""
    cfg = tiny_config(
        tiny_model_config(path=str(path)),
        tensor_parallel_size=size, enable_prefix_caching=False,
    )  # fmt: skip
    engine = Engine(cfg)
    try:
        logits = last_logits(engine, PROMPTS)
        params = SamplingParams(temperature=0.0, max_tokens=5, logprobs=0, ignore_eos=True)
        ids = [engine.add_request(p, params) for p in PROMPTS]
        done = {}
        while engine.has_unfinished():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out.outputs[0]
    finally:
        engine.close()
    tokens = [done[i].token_ids for i in ids]
    logprobs = [[lp.logprob for lp in done[i].logprobs] for i in ids]
    return logits, tokens, logprobs


@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize("kind", ["dense", "awq"])
def test_n_ranks_give_the_greedy_tokens_and_logits_of_one(
    dense_ckpt, awq_ckpt_and_workspace, kind, size
):
    # dense: split from the Hugging Face checkpoint; AWQ: from a workspace converted at N=1
    path = dense_ckpt if kind == "dense" else awq_ckpt_and_workspace[1]
    logits1, tokens1, logprobs1 = serve(path, 1)
    logits, tokens, logprobs = serve(path, size)
    assert len({t for seq in tokens1 for t in seq}) > 3  # a test of something: varied tokens
    assert tokens == tokens1
    torch.testing.assert_close(logits, logits1, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(logprobs1), rtol=0, atol=1e-4)
