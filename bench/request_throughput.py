"""nybble-bench task=request_throughput: the seed's profile_throughput on real conversations.

ShareGPT requests (bench/sharegpt.py: the package's file or dataset.path=, the seed's filters,
``num_prompts`` drawn with ``seed``) go straight to the engine as token ids; each generates as
many tokens as the dataset's answer has (ignore_eos). For each ``concurrency`` value the loop is
closed: that many requests are in flight, and a finished one is replaced at once by the next.
Every concurrency value runs the same requests on a cleared prefix cache, so the rows compare.

Per row: elapsed time, prompt and completion tokens, completion and total tok/s, RPS and RPM,
first-token latency min/avg/max and per-token latency p50/p75/p95/p99. Writes
``request_throughput-<device>.csv`` and its PNG (throughput and latencies against concurrency).
"""

from __future__ import annotations

import statistics
import time
from collections import deque

import numpy as np
import torch
from tqdm import tqdm

from bench.hardware import gpu_name, gpu_slug, versions
from bench.sharegpt import Sample, load_requests
from bench.sweep import finish, log_axis, results_dir, run_overrides
from core.engine import Engine
from core.sampling_params import SamplingParams

COLUMNS = [
    "concurrency", "num_prompts", "max_batch_size", "elapsed_s", "prompt_tokens",
    "completion_tokens", "cached_prompt_tokens", "completion_tok_s", "total_tok_s", "rps", "rpm",
    "ftl_min_s", "ftl_avg_s", "ftl_max_s", "token_latency_p50_s", "token_latency_p75_s",
    "token_latency_p95_s", "token_latency_p99_s", "model", "device", "versions", "overrides",
]  # fmt: skip
# what a sweep plots (bench/sweep.py): column, axis title
SWEEP_METRICS = [
    ("rpm", "requests / min"),
    ("completion_tok_s", "completion tok/s"),
    ("ftl_avg_s", "first-token latency avg (s)"),
]
WARMUP_TOKENS = 16  # tokens per warm-up request: enough to compile and settle every step kind


def clear_prefix_cache(engine: Engine) -> None:
    """Forget every cached KV block, so the next concurrency level prefills its prompts anew
    (the KV tensors stay; only the bookkeeping starts over). The engine must be idle."""
    assert not engine.has_unfinished(), "clear the prefix cache only between runs"
    engine.reset_prefix_cache()


def closed_loop(
    engine: Engine, samples: list[Sample], concurrency: int, params: SamplingParams, desc: str
) -> dict:
    """Serve ``samples`` keeping ``concurrency`` in flight; timings per request and per token."""
    queue = deque(enumerate(samples))
    arrival: dict[str, float] = {}
    last: dict[str, float] = {}
    ftl: list[float] = []
    token_latency: list[float] = []
    completion = cached = 0

    def submit() -> None:
        i, s = queue.popleft()
        rid = f"r{i}"
        engine.add_request(s.prompt_ids, params.replace(max_tokens=s.completion_len), rid)
        arrival[rid] = time.perf_counter()

    bar = tqdm(total=len(samples), desc=desc, unit="req", leave=False)
    start = time.perf_counter()
    while queue and len(engine.requests) < concurrency:
        submit()
    while engine.has_unfinished():
        outs = engine.step()
        now = time.perf_counter()
        for out in outs:
            rid, n = out.request_id, len(out.outputs[0].delta_token_ids)
            if rid not in last:
                ftl.append(now - arrival[rid])
                n -= 1
            if n > 0:  # the gap since this request's previous tokens, shared by the new ones
                token_latency += [(now - last[rid]) / n] * n
            last[rid] = now
            if out.finished:
                completion += out.usage.completion_tokens
                cached += out.usage.cached_tokens
                bar.update()
                if queue:
                    submit()
    elapsed = time.perf_counter() - start
    bar.close()
    return dict(
        elapsed=elapsed, ftl=ftl, token_latency=token_latency, completion=completion, cached=cached
    )


def profile(engine: Engine, samples: list[Sample], concurrency: int, cfg) -> dict:
    """One row: ``samples`` served at ``concurrency`` after ``cfg.warmup_rounds`` warm-ups."""
    params = SamplingParams.from_defaults(cfg.sampling, ignore_eos=True)
    rng = np.random.default_rng(cfg.seed)
    vocab = engine.model_config.vocab_size
    for _ in range(cfg.warmup_rounds):  # random prompts, so no dataset prompt gets cached
        warm = [
            Sample("", rng.integers(3, vocab, s.prompt_len).tolist(), WARMUP_TOKENS, "")
            for s in samples[:concurrency]
        ]
        closed_loop(engine, warm, concurrency, params, "warm-up")
    clear_prefix_cache(engine)
    r = closed_loop(engine, samples, concurrency, params, f"concurrency {concurrency}")
    prompt = sum(s.prompt_len for s in samples)
    elapsed, n = r["elapsed"], len(samples)
    pct = (
        np.percentile(r["token_latency"], [50, 75, 95, 99]) if r["token_latency"] else [np.nan] * 4
    )
    return {
        "concurrency": concurrency, "num_prompts": n, "max_batch_size": cfg.engine.max_batch_size,
        "elapsed_s": elapsed, "prompt_tokens": prompt, "completion_tokens": r["completion"],
        "cached_prompt_tokens": r["cached"],
        "completion_tok_s": r["completion"] / elapsed,
        "total_tok_s": (prompt + r["completion"]) / elapsed,
        "rps": n / elapsed, "rpm": n / elapsed * 60,
        "ftl_min_s": min(r["ftl"]), "ftl_avg_s": statistics.mean(r["ftl"]),
        "ftl_max_s": max(r["ftl"]),
        "token_latency_p50_s": float(pct[0]), "token_latency_p75_s": float(pct[1]),
        "token_latency_p95_s": float(pct[2]), "token_latency_p99_s": float(pct[3]),
    }  # fmt: skip


def report(row: dict) -> str:
    """The seed's printed summary of one concurrency level."""
    return "\n".join([
        f"concurrency {row['concurrency']}, {row['num_prompts']} prompts, "
        f"max_batch_size {row['max_batch_size']}",
        f"  elapsed time                 {row['elapsed_s']:.3f} s",
        f"  first token latency (s)      min {row['ftl_min_s']:.3f}  avg {row['ftl_avg_s']:.3f}  "
        f"max {row['ftl_max_s']:.3f}",
        f"  per-token latency (s)        p50 {row['token_latency_p50_s']:.4f}  "
        f"p75 {row['token_latency_p75_s']:.4f}  p95 {row['token_latency_p95_s']:.4f}  "
        f"p99 {row['token_latency_p99_s']:.4f}",
        f"  prompt / completion tokens   {row['prompt_tokens']} / {row['completion_tokens']} "
        f"({row['cached_prompt_tokens']} prompt tokens from the prefix cache)",
        f"  throughput                   {row['completion_tok_s']:.2f} completion tok/s, "
        f"{row['total_tok_s']:.2f} total tok/s",
        f"  requests                     {row['rps']:.3f} req/s, {row['rpm']:.2f} req/min",
    ])  # fmt: skip


def run(cfg) -> list[dict]:
    device = gpu_name()
    header = f"{device} | {versions()}"
    print(header)
    engine = Engine(cfg)
    samples = load_requests(cfg.dataset.path, cfg.num_prompts, engine.tokenizer, cfg.seed)
    longest = max(s.prompt_len + s.completion_len for s in samples)
    if longest > engine.session_len:
        raise SystemExit(
            f"a sampled request needs {longest} tokens, more than session_len="
            f"{engine.session_len}; raise model.session_len"
        )
    print(f"model {cfg.model.name} ({engine.runner.format.name} weights), "
          f"max_batch_size {cfg.engine.max_batch_size}, tokenizer "
          f"{type(engine.tokenizer).__name__}")  # fmt: skip
    common = {"model": cfg.model.name, "device": device, "versions": versions(),
              "overrides": run_overrides()}  # fmt: skip
    rows = []
    for c in tqdm(cfg.concurrency, desc="request_throughput", unit="level"):
        row = {**profile(engine, samples, c, cfg), **common}
        rows.append(row)
        tqdm.write(report(row))
    path = results_dir(cfg) / f"request_throughput-{gpu_slug(device)}.csv"
    finish("request_throughput", rows, COLUMNS, path, plot)
    if torch.cuda.is_available():
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 1e9:.2f} GB")
    return rows


def plot(rows: list[dict], png) -> None:
    """Throughput against concurrency; first-token and per-token latency percentiles."""
    import matplotlib.pyplot as plt

    c = [r["concurrency"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.5))
    ax1.plot(c, [r["completion_tok_s"] for r in rows], "o-", label="completion tok/s")
    ax1.plot(c, [r["total_tok_s"] for r in rows], "s--", label="total tok/s")
    ax1b = ax1.twinx()
    ax1b.plot(c, [r["rpm"] for r in rows], "^:", color="tab:red", label="req/min")
    ax1b.set(ylabel="requests / min", ylim=(0, None))
    ax1.set(xlabel="concurrency", ylabel="tok/s", title="throughput", ylim=(0, None))
    ax1.legend(loc="upper left")
    ax1b.legend(loc="lower right")
    for key, style in (("min", "v-"), ("avg", "o-"), ("max", "^-")):
        ax2.plot(c, [r[f"ftl_{key}_s"] for r in rows], style, label=key)
    ax2.set(xlabel="concurrency", ylabel="s", title="first-token latency")
    ax2.legend()
    for p in (50, 75, 95, 99):
        ax3.plot(c, [r[f"token_latency_p{p}_s"] * 1e3 for r in rows], "o-", label=f"p{p}")
    ax3.set(xlabel="concurrency", ylabel="ms", title="per-token latency")
    ax3.legend()
    for ax in (ax1, ax2, ax3):
        log_axis(ax, c)
        ax.grid(alpha=0.3)
    r0 = rows[0]
    fig.suptitle(f"nybble request_throughput: {r0['model']}, {r0['num_prompts']} ShareGPT "
                 f"prompts, max_batch_size {r0['max_batch_size']} | {r0['device']} | "
                 f"{r0['versions']}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
