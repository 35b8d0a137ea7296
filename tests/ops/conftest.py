"""Setup for the Triton op tests: each kernel against its torch reference (core/ops/reference.py).

Without CUDA, ``TRITON_INTERPRET=1`` is set here, before any test imports a kernel module
(core/ops imports them lazily, on an op's first call, for the same reason), so the kernels run
in Triton's interpreter on CPU tensors; the ``target`` parameter then runs the "interpreter"
cases and skips the "cuda" ones. On a GPU machine the variable stays unset, the interpreter cases
skip, and the ``cuda`` cases (marked ``gpu``) run the compiled kernels in fp16.
"""

from __future__ import annotations

import os

import pytest
import torch

from core.layers.attention_metadata import AttentionMetadata

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

TARGETS = [
    pytest.param(
        ("cpu", torch.float32),
        id="interp-fp32",
        marks=pytest.mark.skipif(not INTERPRETED, reason="Triton interpreter (TRITON_INTERPRET=1)"),
    ),
    pytest.param(
        ("cpu", torch.float16),
        id="interp-fp16",
        marks=pytest.mark.skipif(not INTERPRETED, reason="Triton interpreter (TRITON_INTERPRET=1)"),
    ),
    pytest.param(
        ("cuda", torch.float16),
        id="cuda-fp16",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(
                INTERPRETED or not torch.cuda.is_available(),
                reason="needs a CUDA GPU (compiled Triton)",
            ),
        ],
    ),
]


@pytest.fixture(params=TARGETS)
def target(request) -> tuple[str, torch.dtype]:
    """(device, dtype) the kernel runs on; inputs are drawn fresh for every test."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    return request.param


def build_paged_batch(
    seqs: list[tuple[int, int]],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    device: str,
    dtype: torch.dtype,
    extra_blocks: int = 3,
) -> dict:
    """A batch of sequences (context_len C, new tokens Q) with their whole context already in
    a paged cache whose blocks are scattered at random; every slot no sequence owns is NaN, so a
    kernel that reads past a context or through a wrong block poisons its output."""
    per_seq = [-(-c // block_size) for c, _ in seqs]
    num_blocks = sum(per_seq) + extra_blocks
    perm = torch.randperm(num_blocks).tolist()
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype)
    v_cache = torch.full(shape, float("nan"), dtype=dtype)
    max_blocks = max(per_seq) + 1  # one spare column: -1 past the end, as the runner pads
    tables = torch.full((len(seqs), max_blocks), -1, dtype=torch.int32)
    for i, ((ctx, _), n) in enumerate(zip(seqs, per_seq, strict=True)):
        blocks = [perm.pop() for _ in range(n)]
        tables[i, :n] = torch.tensor(blocks, dtype=torch.int32)
        k = torch.randn(n * block_size, num_kv_heads, head_dim).to(dtype)
        v = torch.randn(n * block_size, num_kv_heads, head_dim).to(dtype)
        k[ctx:] = float("nan")  # the tail of the last block is not part of the context
        v[ctx:] = float("nan")
        k_cache[blocks] = k.view(n, block_size, num_kv_heads, head_dim)
        v_cache[blocks] = v.view(n, block_size, num_kv_heads, head_dim)
    q_lens = [q for _, q in seqs]
    q_loc = torch.tensor([0] + q_lens).cumsum(0).to(torch.int32)
    ctx_lens = torch.tensor([c for c, _ in seqs], dtype=torch.int32)
    total = int(q_loc[-1])
    meta = AttentionMetadata(
        slot_mapping=torch.full((total,), -1, dtype=torch.int64, device=device),
        query_start_loc=q_loc.to(device),
        context_lens=ctx_lens.to(device),
        block_tables=tables.to(device),
        token_context_lens=ctx_lens.repeat_interleave(torch.tensor(q_lens))
        .to(torch.int32)
        .to(device),
        max_query_len=max(q_lens),
        max_context_len=max(c for c, _ in seqs),
        is_decode=all(q == 1 for q in q_lens),
    )
    q = torch.randn(total, num_heads, head_dim).to(dtype).to(device)
    return dict(q=q, k_cache=k_cache.to(device), v_cache=v_cache.to(device), meta=meta)


@pytest.fixture
def paged_batch():
    return build_paged_batch
