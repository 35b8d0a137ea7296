"""nybble-bench task=api_serving: a running server's /v1/chat/completions under load.

The seed's profile_restful_api with vLLM's serving metrics. ShareGPT requests (bench/sharegpt.py)
are sent as one user message each, streaming, with ``max_tokens`` = the dataset answer's token
count and ``ignore_eos``, to ``server_url`` (start one with ``nybble frontend=api``):

- ``request_rate=inf`` (default): closed loop, one row per ``concurrency`` value: that many
  clients, each sending its next request when the previous one ends.
- ``request_rate=R``: open loop, one row: requests arrive as a Poisson process of rate R per
  second (seeded), however many are still running.

Each row draws its own ``num_prompts`` requests (the server's prefix cache would serve a repeated
prompt from memory) and reports time to first token (TTFT), time per output token after the
first (TPOT), inter-token latency between stream chunks (ITL) and end-to-end latency, each as
mean / median / p99 in ms, request and token throughput, and failed requests with their most
common error. Token counts come from the server's ``usage`` when it sends one, else from the
tokenizer. Writes ``api_serving-<device>.csv`` and its PNG (device = the client's machine).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

import numpy as np
from tqdm import tqdm

from bench.chat_stream import StreamResult, stream_chat
from bench.hardware import gpu_name, gpu_slug, versions
from bench.sharegpt import Sample, load_requests
from bench.sweep import finish, log_axis, results_dir, run_overrides
from core.tokenizer import Tokenizer, load_tokenizer

LATENCIES = ("ttft", "tpot", "itl", "e2el")
COLUMNS = [
    "mode", "concurrency", "request_rate", "num_prompts", "completed", "failed", "duration_s",
    "prompt_tokens", "output_tokens", "request_throughput", "output_tok_s", "total_tok_s",
    *[f"{m}_{s}_ms" for m in LATENCIES for s in ("mean", "median", "p99")],
    "top_error", "model", "server_url", "device", "versions", "overrides",
]  # fmt: skip
SWEEP_METRICS = [
    ("output_tok_s", "output tok/s"),
    ("ttft_median_ms", "TTFT median (ms)"),
    ("tpot_median_ms", "TPOT median (ms)"),
]
WARMUP_TOKENS = 16
CHAT_PATH = "/v1/chat/completions"


def payload(cfg, sample: Sample, max_tokens: int | None = None) -> dict:
    """The request body: one user message, streaming, usage asked for in the last chunk."""
    return {
        "model": cfg.model.name,
        "messages": [{"role": "user", "content": sample.prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens or sample.completion_len,
        "ignore_eos": True,
        "temperature": cfg.sampling.temperature,
        "top_p": cfg.sampling.top_p,
    }


async def closed_loop(cfg, url: str, samples: list[Sample], concurrency: int, bar) -> list:
    """``concurrency`` clients, each sending its next request when its previous one ends."""
    todo = iter(enumerate(samples))
    results: list[StreamResult | None] = [None] * len(samples)

    async def client() -> None:
        for i, s in todo:
            results[i] = await stream_chat(url, payload(cfg, s), cfg.request_timeout)
            bar.update()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


async def open_loop(cfg, url: str, samples: list[Sample], rate: float, seed: int, bar) -> list:
    """Requests sent at Poisson arrivals of ``rate`` per second, whatever is still running."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(samples))

    async def one(s: Sample) -> StreamResult:
        r = await stream_chat(url, payload(cfg, s), cfg.request_timeout)
        bar.update()
        return r

    tasks = []
    for s, gap in zip(samples, gaps):
        tasks.append(asyncio.create_task(one(s)))
        await asyncio.sleep(gap)
    return list(await asyncio.gather(*tasks))


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": math.nan, "median": math.nan, "p99": math.nan}
    ms = np.asarray(values) * 1e3
    return {"mean": ms.mean(), "median": np.median(ms), "p99": np.percentile(ms, 99)}


def metrics(
    results: list[StreamResult], samples: list[Sample], duration: float, tokenizer: Tokenizer
) -> dict:
    """vLLM's serving metrics over the completed requests; failures counted beside them."""
    done = [(r, s) for r, s in zip(results, samples) if r.ok]
    prompt = output = 0
    ttft, tpot, itl, e2el = [], [], [], []
    for r, s in done:
        usage = r.usage or {}
        n_out = usage.get("completion_tokens") or len(tokenizer.encode(r.text))
        prompt += usage.get("prompt_tokens") or s.prompt_len
        output += n_out
        ttft.append(r.ttft)
        e2el.append(r.latency)
        itl += r.itl
        if n_out > 1:
            tpot.append((r.latency - r.ttft) / (n_out - 1))
    errors = Counter(r.error for r in results if not r.ok)
    row = {
        "num_prompts": len(samples), "completed": len(done), "failed": sum(errors.values()),
        "duration_s": duration, "prompt_tokens": prompt, "output_tokens": output,
        "request_throughput": len(done) / duration, "output_tok_s": output / duration,
        "total_tok_s": (prompt + output) / duration,
        "top_error": errors.most_common(1)[0][0][:200] if errors else "",
    }  # fmt: skip
    for name, values in zip(LATENCIES, (ttft, tpot, itl, e2el)):
        for stat, v in percentiles(values).items():
            row[f"{name}_{stat}_ms"] = float(v)
    return row


async def warm_up(cfg, url: str) -> None:
    """A few short requests first (not from the dataset, so none of its prompts gets cached);
    if none succeeds, there is no usable server: stop."""
    n = min(4, max(cfg.concurrency))
    sample = Sample("Warm-up: say hello.", [], WARMUP_TOKENS, "")
    for _ in range(cfg.warmup_rounds):
        rs = await asyncio.gather(
            *(stream_chat(url, payload(cfg, sample, WARMUP_TOKENS), cfg.request_timeout)
              for _ in range(n))
        )  # fmt: skip
        if not any(r.ok for r in rs):
            raise SystemExit(
                f"no warm-up request to {url} succeeded ({rs[0].error}); start the server with "
                f"`nybble frontend=api` or set server_url="
            )


def report(row: dict) -> str:
    load = (f"concurrency {row['concurrency']}" if row["mode"] == "closed"
            else f"Poisson arrivals at {row['request_rate']:g} req/s")  # fmt: skip
    lines = [
        f"{load}: {row['completed']} of {row['num_prompts']} requests completed, "
        f"{row['failed']} failed, in {row['duration_s']:.2f} s",
        f"  throughput  {row['request_throughput']:.3f} req/s, {row['output_tok_s']:.2f} output "
        f"tok/s, {row['total_tok_s']:.2f} total tok/s ({row['prompt_tokens']} prompt + "
        f"{row['output_tokens']} output tokens)",
    ]
    for m in LATENCIES:
        lines.append(f"  {m.upper():5s} ms   mean {row[f'{m}_mean_ms']:9.2f}  median "
                     f"{row[f'{m}_median_ms']:9.2f}  p99 {row[f'{m}_p99_ms']:9.2f}")  # fmt: skip
    if row["failed"]:
        lines.append(f"  FAILED {row['failed']}: most often {row['top_error']}")
    return "\n".join(lines)


def run(cfg) -> list[dict]:
    device = gpu_name()
    print(f"client on {device} | {versions()} | server {cfg.server_url}")
    tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.path)
    url = cfg.server_url.rstrip("/") + CHAT_PATH
    open_rate = cfg.request_rate if math.isfinite(cfg.request_rate) else None
    levels = [None] if open_rate else list(cfg.concurrency)
    pool = load_requests(cfg.dataset.path, cfg.num_prompts * len(levels), tokenizer, cfg.seed)
    asyncio.run(warm_up(cfg, url))
    common = {"model": cfg.model.name, "server_url": cfg.server_url, "device": device,
              "versions": versions(), "overrides": run_overrides()}  # fmt: skip
    rows = []
    for k, c in enumerate(levels):
        samples = pool[k * cfg.num_prompts : (k + 1) * cfg.num_prompts]
        desc = f"rate {open_rate:g}/s" if open_rate else f"concurrency {c}"
        with tqdm(total=len(samples), desc=desc, unit="req", leave=False) as bar:
            start = time.perf_counter()
            if open_rate:
                results = asyncio.run(open_loop(cfg, url, samples, open_rate, cfg.seed, bar))
            else:
                results = asyncio.run(closed_loop(cfg, url, samples, c, bar))
            duration = time.perf_counter() - start
        row = {
            "mode": "open" if open_rate else "closed",
            "concurrency": "" if open_rate else c,
            "request_rate": cfg.request_rate,
            **metrics(results, samples, duration, tokenizer),
            **common,
        }
        rows.append(row)
        tqdm.write(report(row))
    path = results_dir(cfg) / f"api_serving-{gpu_slug(device)}.csv"
    finish("api_serving", rows, COLUMNS, path, plot)
    return rows


def plot(rows: list[dict], png) -> None:
    """Throughput and the four latencies (mean, median, p99) against concurrency (closed loop)
    or request rate (open loop); failed requests are written on the throughput panel."""
    import matplotlib.pyplot as plt

    closed = rows[0]["mode"] == "closed"
    x = [r["concurrency"] if closed else r["request_rate"] for r in rows]
    xlabel = "concurrency" if closed else "request rate (req/s)"
    fig, axes = plt.subplots(1, 5, figsize=(24, 4.5))
    ax = axes[0]
    ax.plot(x, [r["output_tok_s"] for r in rows], "o-", label="output tok/s")
    ax.plot(x, [r["total_tok_s"] for r in rows], "s--", label="total tok/s")
    for xi, r in zip(x, rows):
        if r["failed"]:
            ax.annotate(f"{r['failed']} failed", (xi, r["output_tok_s"]), color="tab:red")
    ax.set(xlabel=xlabel, ylabel="tok/s", title="throughput", ylim=(0, None))
    ax.legend()
    for ax, m in zip(axes[1:], LATENCIES):
        for stat, style in (("mean", "o-"), ("median", "s--"), ("p99", "^:")):
            ax.plot(x, [r[f"{m}_{stat}_ms"] for r in rows], style, label=stat)
        ax.set(xlabel=xlabel, ylabel="ms", title=m.upper())
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
        log_axis(ax, x)
    r0 = rows[0]
    fig.suptitle(f"nybble api_serving: {r0['model']} at {r0['server_url']}, "
                 f"{r0['num_prompts']} ShareGPT prompts per point | client {r0['device']} | "
                 f"{r0['versions']}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
