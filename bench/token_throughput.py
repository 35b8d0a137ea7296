"""nybble-bench task=token_throughput: the seed's profile_generation table, and how close to
the memory-bandwidth limit each decode step runs.

For every (prompt, completion) pair and concurrency B: B requests of random prompt tokens start
together and each generates exactly ``completion`` tokens (ignore_eos); warm-up rounds first.
Every run draws its prompts from its own seed (cfg.seed, B, prompt, completion), and every round
draws new ones, so no timed prompt is in the prefix cache: each first token is a full prefill,
as in the seed's TurboMind run (``cached_prompt_tokens`` counts any hit, and should read 0).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.hardware import copy_bandwidth, gpu_name, gpu_slug, versions
from bench.sweep import read_csv, write_csv
from core.engine import Engine
from core.sampling_params import SamplingParams

COLUMNS = [
    "batch", "tp", "prompt_tokens", "completion_tokens", "thr_per_proc", "thr_per_node", "rpm",
    "mem_per_proc", "mem_per_gpu", "mem_per_node", "ftl_min", "ftl_avg", "ftl_max",
    "token_latency_p50", "token_latency_p75", "token_latency_p95", "token_latency_p99",
    "decode_step_ms", "limit_step_ms", "frac_limit", "cached_prompt_tokens",
]  # fmt: skip
GB = 1e9


def weight_bytes_per_step(engine: Engine) -> int:
    """Bytes every decode step reads: all weights but the embedding table (only B rows of it)."""
    model = engine.runner.model
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = model.model.embed_tokens.weight
    return total - emb.numel() * emb.element_size()


def kv_bytes_per_token(engine: Engine) -> int:
    return engine.runner.kv_bytes_per_block() // engine.runner.block_size


def one_round(
    engine: Engine,
    batch: int,
    prompt: int,
    completion: int,
    rng: np.random.Generator,
    params: SamplingParams,
):
    vocab = engine.model_config.vocab_size
    arrival, first, last_t, gaps = {}, {}, {}, []
    decode_steps: list[float] = []
    t_start = time.perf_counter()
    for i in range(batch):
        ids = rng.integers(3, min(vocab, 100_000), prompt).tolist()
        engine.add_request(ids, params, f"b{i}")
        arrival[f"b{i}"] = t_start
    peak_blocks = 0
    while engine.has_unfinished():
        before = engine.stats.num_prefill_tokens
        t0 = time.perf_counter()
        outs = engine.step()
        t1 = time.perf_counter()
        if engine.stats.num_prefill_tokens == before:
            decode_steps.append(t1 - t0)
        peak_blocks = max(
            peak_blocks, engine.block_manager.num_blocks - engine.block_manager.num_free_blocks
        )
        for o in outs:
            if o.request_id not in first:
                first[o.request_id] = t1 - arrival[o.request_id]
            else:
                gaps.append(t1 - last_t[o.request_id])
            last_t[o.request_id] = t1
    return time.perf_counter() - t_start, list(first.values()), gaps, decode_steps, peak_blocks


def profile(engine: Engine, batch: int, prompt: int, completion: int, cfg, bw: float) -> dict:
    params = SamplingParams.from_defaults(cfg.sampling, max_tokens=completion, ignore_eos=True)
    # One seed per run: with cfg.seed alone, every run drew the same prompts, so a later run's
    # prompts (or their first 512 tokens, for 512/1024 after 512/512) came from the prefix cache
    # and its first tokens were not prefills (session 14's table: 8 ms at batch 1, 512/1024).
    rng = np.random.default_rng([cfg.seed, batch, prompt, completion])
    for _ in range(cfg.warmup_rounds):
        one_round(
            engine,
            batch,
            prompt,
            min(completion, 32),
            rng,
            params.replace(max_tokens=min(completion, 32)),
        )
    cuda = engine.runner.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    elapsed, ftl, gaps, steps = 0.0, [], [], []
    peak_blocks = 0
    hits_before = engine.block_manager.num_prefix_hits
    for _ in range(cfg.test_rounds):
        e, f, g, s, pb = one_round(engine, batch, prompt, completion, rng, params)
        elapsed += e
        ftl += f
        gaps += g
        steps += s
        peak_blocks = max(peak_blocks, pb)
    cached = engine.block_manager.num_prefix_hits - hits_before
    tokens = batch * completion * cfg.test_rounds
    step_s = statistics.median(steps)
    ctx = prompt + completion / 2  # mean context over the decode phase
    limit_s = (weight_bytes_per_step(engine) + batch * ctx * kv_bytes_per_token(engine)) / bw
    weights = weight_bytes_per_step(engine) + engine.runner.model.model.embed_tokens.weight.nbytes
    kv_alloc = engine.runner.num_blocks * engine.runner.kv_bytes_per_block()
    kv_used = peak_blocks * engine.runner.kv_bytes_per_block()
    peak = torch.cuda.max_memory_allocated() if cuda else weights + kv_alloc
    activations = max(peak - weights - kv_alloc, 0)
    mem = (weights + kv_used + activations) / GB
    pct = np.percentile(np.array(gaps) * 1e3, [50, 75, 95, 99]) if gaps else [float("nan")] * 4
    return {
        "batch": batch, "tp": 1, "prompt_tokens": prompt, "completion_tokens": completion,
        "thr_per_proc": tokens / elapsed, "thr_per_node": tokens / elapsed,
        "rpm": batch * cfg.test_rounds / elapsed * 60,
        "mem_per_proc": mem, "mem_per_gpu": mem, "mem_per_node": mem,
        "ftl_min": min(ftl), "ftl_avg": statistics.mean(ftl), "ftl_max": max(ftl),
        "token_latency_p50": pct[0], "token_latency_p75": pct[1],
        "token_latency_p95": pct[2], "token_latency_p99": pct[3],
        "decode_step_ms": step_s * 1e3, "limit_step_ms": limit_s * 1e3, "frac_limit": limit_s / step_s,
        "cached_prompt_tokens": cached,
    }  # fmt: skip


def run(cfg) -> list[dict]:
    name, out_dir = gpu_name(), Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() and cfg.engine.device != "cpu" else "cpu"
    bw = copy_bandwidth(device)
    header = f"{name} | {versions()} | copy bandwidth {bw / 1e9:.0f} GB/s"
    print(header)
    pairs = [tuple(p) for p in cfg.token_pairs]
    baseline = {}
    if cfg.baseline_batches and device == "cuda":
        from bench.hf_baseline import hf_generate_throughput

        p, c = pairs[0]
        try:
            baseline = hf_generate_throughput(cfg.model, list(cfg.baseline_batches), p, c)
        except Exception as e:  # the nybble rows still count; say why the ratio is missing
            print(f"transformers baseline failed, no speedup_vs_hf column: {type(e).__name__}: {e}")
            torch.cuda.empty_cache()
    max_b = max(cfg.concurrency)
    cfg.engine.max_batch_size = max(cfg.engine.max_batch_size, max_b)
    engine = Engine(cfg)
    print(f"model {cfg.model.name}: {engine.runner.format.name} weights, "
          f"{weight_bytes_per_step(engine) / GB:.3f} GB read per decode step, "
          f"KV cache {engine.runner.num_blocks * engine.runner.kv_bytes_per_block() / GB:.1f} GB")  # fmt: skip
    rows = []
    runs = [(p, c, b) for p, c in pairs for b in cfg.concurrency]
    for p, c, b in tqdm(runs, desc="token_throughput", unit="run"):
        row = profile(engine, b, p, c, cfg, bw)
        if b in baseline and (p, c) == pairs[0]:
            row["hf_fp16_tok_s"] = baseline[b]["tok_s"]
            row["speedup_vs_hf"] = row["thr_per_proc"] / baseline[b]["tok_s"]
        rows.append(row)
        write_results(rows, out_dir, gpu_slug(name), header, cfg)  # each run lands as it ends
        tqdm.write(f"batch {b:3d} {p:5d}/{c:<5d} {row['thr_per_proc']:8.1f} tok/s  "
                   f"ftl {row['ftl_avg'] * 1e3:6.1f} ms  step {row['decode_step_ms']:6.2f} ms  "
                   f"limit {row['limit_step_ms']:6.2f} ms  frac {row['frac_limit']:.2f}  "
                   f"cached prompt tokens {row['cached_prompt_tokens']}")  # fmt: skip
    print(f"wrote {out_dir / f'token_throughput-{gpu_slug(name)}.csv'} and its PNG")
    return rows


def write_results(rows, out_dir: Path, slug: str, header: str, cfg) -> None:
    """Write the CSV and PNG: this run's rows, plus earlier rows of the same file for other
    (batch, prompt, completion) runs, so a table can be filled over several invocations."""
    cols = COLUMNS + ["hf_fp16_tok_s", "speedup_vs_hf"]
    path = out_dir / f"token_throughput-{slug}.csv"

    def key(r):
        return r["batch"], r["prompt_tokens"], r["completion_tokens"]

    new = {key(r) for r in rows}
    earlier = (
        [{k: v for k, v in r.items() if v != ""} for r in read_csv(path)] if path.exists() else []
    )
    rows = sorted([r for r in earlier if key(r) not in new] + list(rows),
                  key=lambda r: (r["prompt_tokens"], r["completion_tokens"], r["batch"]))  # fmt: skip
    write_csv(rows, cols, path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for p, c in sorted({(r["prompt_tokens"], r["completion_tokens"]) for r in rows}):
        sel = [r for r in rows if (r["prompt_tokens"], r["completion_tokens"]) == (p, c)]
        ax1.plot(
            [r["batch"] for r in sel], [r["thr_per_proc"] for r in sel], "o-", label=f"{p}/{c}"
        )
        ax2.plot([r["batch"] for r in sel], [r["frac_limit"] for r in sel], "o-", label=f"{p}/{c}")
    hf = [(r["batch"], r["hf_fp16_tok_s"]) for r in rows if "hf_fp16_tok_s" in r]
    for i, (b, tok_s) in enumerate(hf):
        ax1.plot([b], [tok_s], "kx", ms=10, label=None if i else "transformers fp16")
    ax1.set(
        xlabel="concurrency", ylabel="output tok/s", title="throughput", xscale="log", yscale="log"
    )
    ax2.set(
        xlabel="concurrency",
        ylabel="fraction of bandwidth limit",
        title="decode step vs limit",
        xscale="log",
        ylim=(0, 1),
    )
    ax1.legend(title="prompt/completion")
    ax2.legend(title="prompt/completion")
    fig.suptitle(f"nybble {cfg.model.name} ({header})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / f"token_throughput-{slug}.png", dpi=110)
    plt.close(fig)
