"""What a user would otherwise pick: transformers' LlamaForCausalLM in fp16 with a static KV
cache, same shapes as the served model, random weights."""

from __future__ import annotations

import gc
import time

import torch


def hf_generate_throughput(
    mc, batches: list[int], prompt_tokens: int, completion_tokens: int
) -> dict[int, dict]:
    """tok/s of ``generate`` (prefill included, greedy, no early stop) per batch size."""
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    print(f"transformers {transformers.__version__}: LlamaForCausalLM fp16, static KV cache")

    cfg = LlamaConfig(
        vocab_size=mc.vocab_size, hidden_size=mc.hidden_size,
        intermediate_size=mc.intermediate_size, num_hidden_layers=mc.num_layers,
        num_attention_heads=mc.num_heads, num_key_value_heads=mc.num_kv_heads or mc.num_heads,
        max_position_embeddings=max(mc.max_position_embeddings, prompt_tokens + completion_tokens),
        rms_norm_eps=mc.rms_norm_eps, attention_bias=mc.bias, tie_word_embeddings=False,
    )  # fmt: skip
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    results = {}
    for b in batches:
        ids = torch.randint(3, mc.vocab_size, (b, prompt_tokens), device="cuda")
        kw = dict(max_new_tokens=completion_tokens, min_new_tokens=completion_tokens,
                  do_sample=False, cache_implementation="static", pad_token_id=0)  # fmt: skip
        with torch.inference_mode():
            # warm-up at the measured shapes: with a static cache transformers compiles the
            # forward per batch size and cache length; the timed run must not include that
            model.generate(ids, **kw)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            out = model.generate(ids, **kw)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        generated = (out.shape[1] - prompt_tokens) * b
        results[b] = {
            "tok_s": generated / seconds,
            "seconds": seconds,
            "weights_gb": weights_gb,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
        }
        print(f"transformers fp16 static cache: batch {b}: {generated / seconds:.1f} tok/s")
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return results
