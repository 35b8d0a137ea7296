"""Is a batch-1 prefill bound by the GPU or by the host that launches it?

For prompts of a few lengths, times the model's eager forward three ways: the host's time to
enqueue it (no sync inside), its GPU time (CUDA events around it) and the wall time to the end
of the GPU work. When the GPU time tracks the enqueue time, the GPU waited for the launches:
the prefill is host-bound, and faster kernels do not shorten the time to first token. With
``--profile``, one 256-token forward runs under torch.profiler (top ops by CPU and CUDA time).

    PYTHONPATH=.site:. python bench/prefill_host.py [--profile] > $OUT/prefill-host.log

Needs the Hydra wheels (it composes ``model=internlm-chat-20b model.load_format=dummy quant=awq``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import triton

from core.compose import compose_config
from core.engine import Engine
from core.sampling_params import SamplingParams


def forward_times(engine: Engine, prompt: int, rng: np.random.Generator, tag: str):
    """(host enqueue, GPU, wall) ms of one eager forward over a fresh ``prompt``-token request."""
    runner = engine.runner
    vocab = engine.model_config.vocab_size
    engine.add_request(rng.integers(3, vocab, prompt).tolist(), SamplingParams(max_tokens=1), tag)
    batch = engine.scheduler.schedule()
    input_ids, positions, meta, _ = runner.prepare(batch)
    cuda = runner.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    with torch.inference_mode():
        runner.model(input_ids, positions, meta)
    t1 = time.perf_counter()
    if cuda:
        end.record()
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    engine.abort(tag)  # frees its blocks: the next request starts from an empty cache
    engine.reset_prefix_cache()
    gpu = start.elapsed_time(end) if cuda else (t1 - t0) * 1e3  # CPU: the work is the enqueue
    return (t1 - t0) * 1e3, gpu, (t2 - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", default="256,512,1024")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    cfg = compose_config(["model=internlm-chat-20b", "model.load_format=dummy", "quant=awq"])
    engine = Engine(cfg)
    print(
        f"{torch.cuda.get_device_name()} | torch {torch.__version__}, triton {triton.__version__}"
    )
    rng = np.random.default_rng(0)
    for prompt in map(int, args.prompts.split(",")):
        runs = [forward_times(engine, prompt, rng, f"p{prompt}-{i}") for i in range(args.repeats)]
        cells = "  ".join(f"{h:.1f}/{g:.1f}/{w:.1f}" for h, g, w in runs)
        print(f"prompt {prompt}: host enqueue / GPU / wall ms: {cells}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            forward_times(engine, 256, rng, "profiled")
        for key in ("self_cpu_time_total", "self_cuda_time_total"):
            print(prof.key_averages().table(sort_by=key, row_limit=16, max_name_column_width=60))


if __name__ == "__main__":
    main()
