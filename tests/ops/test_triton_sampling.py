"""The Triton top-k sampler against the sampler's torch candidate path (core/logits_processors.py)
given the same exponential draws."""

from __future__ import annotations

import pytest
import torch

from core.logits_processors import apply_min_p, truncate_sorted


# temperature, top_p, top_k, min_p per row
def on(target) -> str:
    """The target's device; the sampler's logits are fp32 whatever the model's dtype, so one
    interpreter case (fp32) covers the CPU."""
    device, dtype = target
    if device == "cpu" and dtype != torch.float32:
        pytest.skip("sampling runs in fp32: the interp-fp32 case covers it")
    return device


ROWS = [
    (0.7, 1.0, 40.0, 0.0),
    (1.0, 0.9, 5.0, 0.0),
    (1.3, 0.5, 64.0, 0.05),
    (1.0, 1.0, 1.0, 0.0),  # a greedy row as the sampler passes it: top_k 1
    (0.9, 0.95, 33.0, 0.02),
    (2.0, 0.8, 64.0, 0.0),
]


def reference(logits, params, q):
    """sorted candidates -> temperature -> top-k / top-p -> min-p -> softmax -> race."""
    vals, idx = logits.topk(q.shape[1], dim=-1)
    vals = truncate_sorted(vals / params[:, 0:1], params[:, 2], params[:, 1])
    vals = apply_min_p(vals, params[:, 3])
    choice = (vals.softmax(dim=-1) / q).argmax(dim=-1)
    return idx.gather(1, choice[:, None])[:, 0]


# small chunks: the interpreter's bitonic sorts are slow (the engine's CHUNK is 4096)
@pytest.mark.parametrize("vocab, chunk", [(1000, 256), (300, 512)])
def test_sample_top_k_matches_the_torch_candidate_path(target, vocab, chunk):
    from core.ops.triton_sampling import k_pad, sample_top_k

    device = on(target)
    b = len(ROWS)
    logits = (torch.randn(b, vocab) * 3).to(device)
    logits[0, 17] = float("-inf")  # a banned token
    params = torch.tensor(ROWS, device=device)
    kp = k_pad(64)
    for _ in range(2):
        q = torch.empty(b, kp, device=device).exponential_()
        tokens = sample_top_k(logits, params, q, chunk=chunk)
        assert tokens.dtype == torch.int64
        assert tokens.tolist() == reference(logits, params, q).tolist()
    assert tokens[3] == logits[3].argmax()  # top_k 1: the best logit whatever q is


def test_sample_top_k_breaks_ties_towards_the_lower_token_id(target):
    from core.ops.triton_sampling import sample_top_k

    device = on(target)
    logits = torch.zeros(2, 700, device=device)
    logits[0, [650, 90, 300]] = 5.0  # three equal best logits, across chunks
    logits[1, 5:] = float("-inf")
    params = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 2, device=device)
    tokens = sample_top_k(logits, params, torch.rand(2, 16, device=device) + 0.5, chunk=256)
    assert tokens.tolist() == [90, 0]
    params[:, 2] = 16.0  # five equal candidates, equal draws: the first, the lowest id, wins
    assert sample_top_k(logits, params, torch.ones(2, 16, device=device), chunk=256)[1] == 0


def test_sample_top_k_refuses_what_it_cannot_rank(target):
    from core.ops.triton_sampling import sample_top_k

    device = on(target)
    logits = torch.randn(2, 1000, device=device)
    params = torch.ones(2, 4, device=device)
    with pytest.raises(AssertionError, match="K_PAD=128"):
        sample_top_k(logits, params, torch.ones(2, 128, device=device))
    with pytest.raises(AssertionError, match="q: expected"):
        sample_top_k(logits, params, torch.ones(2, 24, device=device))
