"""On the GPU: the Triton + CUDA-graph path against the torch reference path."""

from __future__ import annotations

import os

import pytest
import torch

# Triton rounds fp32 dot operands to TF32 by default; full fp32 here lets the fp32 comparison
# hold to the reference's precision (set before any kernel of this session compiles)
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

from core.config import EngineConfig, KernelsConfig, NybbleConfig, QuantConfig
from core.engine import Engine
from core.ops.pdl import use_pdl
from core.sampling_params import SamplingParams
from tests.conftest import tiny_model_config

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

PROMPTS = [
    [(11 * i + 7 * j) % 900 + 3 for j in range(n)] for i, n in enumerate((1, 9, 31, 70, 130, 5))
]


def engine(
    backend: str,
    graphs: bool,
    dtype: str,
    quant: str = "none",
    pdl: bool = True,
    split_k_sum: str = "consumer",
    **model,
) -> Engine:
    mc = tiny_model_config(vocab_size=1024, session_len=512, max_position_embeddings=512, **model)
    cfg = NybbleConfig(
        model=mc,
        quant=QuantConfig(name=quant),
        kernels=KernelsConfig(backend=backend, split_k_sum=split_k_sum),
        engine=EngineConfig(device="cuda", dtype=dtype, cuda_graphs=graphs, num_kv_blocks=512,
                            block_size=16, max_batch_size=8, max_num_batched_tokens=64, pdl=pdl),
    )  # fmt: skip
    e = Engine(cfg)
    # random weights give near-tied logits, where fp32 vs TF32 rounding picks either; a sharper
    # head (logit std ~5) keeps greedy decisions meaningful. In place: graphs see it too.
    with torch.no_grad():
        e.runner.model.lm_head.weight.mul_(30)
    return e


def greedy_tokens(e: Engine, n: int = 24, prompts: list[list[int]] = PROMPTS) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, logprobs=0)
    for i, p in enumerate(prompts):
        e.add_request(p, params, f"r{i}")
    done = {}
    while e.has_unfinished():
        done.update({o.request_id: o for o in e.step() if o.finished})
    return [done[f"r{i}"].outputs[0] for i in range(len(prompts))]


def test_triton_graph_path_gives_the_reference_greedy_tokens_fp32():
    ref = greedy_tokens(engine("torch", graphs=False, dtype="float32"))
    fast_engine = engine("triton", graphs=True, dtype="float32")
    assert (
        fast_engine.runner.graphs is not None
        and fast_engine.runner.kernels.chosen["paged_attention"] == "triton"
    )
    fast = greedy_tokens(fast_engine)
    for r, f in zip(ref, fast):
        assert f.token_ids == r.token_ids
        lr = torch.tensor([x.logprob for x in r.logprobs])
        lf = torch.tensor([x.logprob for x in f.logprobs])
        assert (lr - lf).abs().max().item() < 1e-3  # stated tolerance for fp32


def test_triton_graph_path_matches_the_reference_in_fp16_with_awq_weights():
    mk = dict(hidden_size=256, intermediate_size=512, num_heads=2)
    ref = greedy_tokens(
        engine("torch", graphs=False, dtype="float16", quant="awq", load_format="dummy", **mk), n=12
    )
    fast = greedy_tokens(
        engine("triton", graphs=True, dtype="float16", quant="awq", load_format="dummy", **mk), n=12
    )
    agree = sum(a == b for r, f in zip(ref, fast) for a, b in zip(r.token_ids, f.token_ids))
    total = sum(len(r.token_ids) for r in ref)
    # fp16 rounding may flip a near-tie and the continuation with it; most tokens agree
    assert agree / total > 0.8
    first = [(r.logprobs[0].logprob, f.logprobs[0].logprob) for r, f in zip(ref, fast)]
    assert all(abs(a - b) < 2e-2 for a, b in first)


def test_ops_adding_the_split_k_partial_sums_change_no_token_or_logprob():
    """kernels.split_k_sum=consumer (core/partial_sums.py) in CUDA graphs with AWQ weights: the
    tensor-core GEMV's sums in the same order, so the same tokens and logprobs, bit for bit.
    Prompts of 16 tokens in all keep every step at 16 rows or fewer (the tensor-core GEMV; the
    tl.dot paths of 17-64 rows used fp16 atomics, which consumer mode replaces with one rounding:
    not the same bits)."""
    mk = dict(hidden_size=512, intermediate_size=1024, num_heads=4)
    prompts = [[5, 9, 200], [77], [3, 1, 4, 1, 5], [900, 12], [8, 8, 8, 8, 8]]  # 16 tokens
    gemm = engine("triton", graphs=True, dtype="float16", quant="awq", load_format="dummy",
                  split_k_sum="gemm", **mk)  # fmt: skip
    consumer = engine("triton", graphs=True, dtype="float16", quant="awq", load_format="dummy",
                      split_k_sum="consumer", **mk)  # fmt: skip
    assert consumer.runner.kernels.partial_sums and not gemm.runner.kernels.partial_sums
    want = greedy_tokens(gemm, n=16, prompts=prompts)
    got = greedy_tokens(consumer, n=16, prompts=prompts)
    for w, g in zip(want, got):
        assert g.token_ids == w.token_ids
        assert [x.logprob for x in g.logprobs] == [x.logprob for x in w.logprobs]


def test_fragment_order_inputs_change_no_token_or_logprob(monkeypatch):
    """The norms and SiLU x mul writing the tensor-core GEMV's inputs in fragment order
    (core/fragment_order.py), in CUDA graphs with AWQ weights: the same values reach the same
    sums, so the same tokens and logprobs, bit for bit, as row-major inputs."""
    import plugins.awq.kernels as awq_kernels

    mk = dict(hidden_size=512, intermediate_size=1024, num_heads=4)
    prompts = [[5, 9, 200], [77], [3, 1, 4, 1, 5], [900, 12], [8, 8, 8, 8, 8]]  # 16 tokens
    assert awq_kernels.FRAGMENT_ORDER
    on = engine("triton", graphs=True, dtype="float16", quant="awq", load_format="dummy", **mk)
    got = greedy_tokens(on, n=16, prompts=prompts)
    monkeypatch.setattr(awq_kernels, "FRAGMENT_ORDER", False)
    off = engine("triton", graphs=True, dtype="float16", quant="awq", load_format="dummy", **mk)
    want = greedy_tokens(off, n=16, prompts=prompts)
    for w, g in zip(want, got):
        assert g.token_ids == w.token_ids
        assert [x.logprob for x in g.logprobs] == [x.logprob for x in w.logprobs]


def test_graph_and_eager_triton_paths_agree_exactly_on_greedy_tokens():
    eager = greedy_tokens(engine("triton", graphs=False, dtype="float16"))
    graph = greedy_tokens(engine("triton", graphs=True, dtype="float16"))
    assert [e.token_ids for e in eager] == [g.token_ids for g in graph]


def test_async_scheduling_feeds_graph_steps_on_the_device_without_changing_a_token():
    sync = engine("triton", graphs=True, dtype="float16")
    sync.cfg.engine.async_output = sync.cfg.engine.async_scheduling = False
    fed_engine = engine("triton", graphs=True, dtype="float16")
    execute, fed_steps = fed_engine.runner.execute, []

    def spy(batch, fed=None):
        fed_steps.append(fed is not None)
        return execute(batch, fed)

    fed_engine.runner.execute = spy
    want, got = greedy_tokens(sync, n=40), greedy_tokens(fed_engine, n=40)
    assert sum(fed_steps) > 30  # the decode steps were launched before their tokens were known
    for w, g in zip(want, got):
        assert g.token_ids == w.token_ids
        assert [x.logprob for x in g.logprobs] == [x.logprob for x in w.logprobs]


def test_prefill_graphs_give_the_eager_prefill_tokens_and_logprobs_fp32():
    eager = engine("triton", graphs=True, dtype="float32")
    eager.runner.prefill_graphs = None  # every prefill eager
    graphed = engine("triton", graphs=True, dtype="float32")
    assert graphed.runner.prefill_graphs is not None
    assert graphed.runner.prefill_graphs.sizes == [16, 32, 64]  # max_num_batched_tokens 64
    run, replays = graphed.runner.prefill_graphs.run, []
    graphed.runner.prefill_graphs.run = lambda batch: replays.append(batch) or run(batch)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=0)
    for i, prompt in enumerate(PROMPTS):  # one at a time: each prefill is a batch of one
        outs = []
        for e in (eager, graphed):
            e.add_request(prompt, params, f"alone{i}")
            while e.has_unfinished():
                outs += [o.outputs[0] for o in e.step() if o.finished]
        want, got = outs
        assert got.token_ids == want.token_ids, i
        lw = torch.tensor([x.logprob for x in want.logprobs])
        lg = torch.tensor([x.logprob for x in got.logprobs])
        assert (lw - lg).abs().max().item() < 1e-3
    # every prompt's last prefill chunk replayed a prefill graph (130 tokens: 64 + 64 eager,
    # then 2), except the one-token prompt, whose step is a decode step (the decode graphs)
    assert len(replays) == sum(len(p) > 1 for p in PROMPTS) == 5


def test_programmatic_dependent_launch_changes_no_token_or_logprob():
    # AWQ fp16: the tensor-core GEMV's decode (split-K, partial sums added in a fixed order),
    # the CUDA-core GEMV, prefill's dequantize: every kernel gives the same bits every run
    mk = dict(hidden_size=256, intermediate_size=512, num_heads=2)
    hopper = torch.cuda.get_device_capability()[0] >= 9
    runs = {}
    for pdl in (False, True):  # one engine at a time: the setting is the process's
        e = engine("triton", graphs=True, dtype="float16", quant="awq", load_format="dummy",
                   pdl=pdl, **mk)  # fmt: skip
        assert use_pdl(torch.empty(0, device="cuda")) == (pdl and hopper)
        runs[pdl] = greedy_tokens(e, n=40)
    for off, on in zip(runs[False], runs[True]):
        assert on.token_ids == off.token_ids
        assert [x.logprob for x in on.logprobs] == [x.logprob for x in off.logprobs]
