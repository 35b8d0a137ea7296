"""Helpers for engine tests: a tiny random InternLM engine on the CPU."""

from __future__ import annotations

import dataclasses

from core.engine import Engine
from core.sampling_params import SamplingParams
from tests.conftest import tiny_config, tiny_model_config

# prompts of assorted lengths (2 to 60 tokens) inside the tiny vocabulary
PROMPTS = [
    [(7 * i + 3 * j) % 250 + 3 for j in range(n)] for i, n in enumerate((5, 17, 33, 2, 60, 9))
]


def make_engine(**engine) -> Engine:
    """Tiny model whose vocabulary (1024) the offline byte tokenizer covers: bytes, then
    stand-in characters."""
    mc = tiny_model_config(vocab_size=1024, session_len=512, max_position_embeddings=512)
    return Engine(tiny_config(mc, **engine))


def greedy(max_tokens: int = 8, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


def run_all(engine: Engine) -> dict:
    """Step until every request is done; {request_id: final RequestOutput}."""
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return done


def with_engine(engine: Engine, **changes) -> Engine:
    cfg = dataclasses.replace(engine.cfg, engine=dataclasses.replace(engine.cfg.engine, **changes))
    return Engine(cfg)
