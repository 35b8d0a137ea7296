"""nybble-bench task=request_throughput end to end: the tiny model on the CPU, a small slice."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import request_throughput
from bench.sharegpt import load_records, opening_pairs, sample_requests
from bench.sweep import read_csv
from core.compose import compose_config
from core.tokenizer import ByteTokenizer

# the tiny random model with the byte tokenizer; a 1024-token vocabulary keeps sampling cheap
TINY = ["model=internlm-tiny", "engine=cpu-small", "model.vocab_size=1024"]


def bench_config(tmp_path: Path, dataset: Path, *overrides: str):
    return compose_config(
        ["task=request_throughput", *TINY, f"dataset.path={dataset}",
         f"output_dir={tmp_path}", *overrides],
        config_name="bench",
    )  # fmt: skip


def test_request_throughput_writes_the_documented_csv(tmp_path, sharegpt_file):
    cfg = bench_config(tmp_path, sharegpt_file, "num_prompts=6", "concurrency=[1,3]")
    rows = request_throughput.run(cfg)
    (csv_path,) = tmp_path.glob("request_throughput-*.csv")
    table = read_csv(csv_path)
    assert list(table[0]) == request_throughput.COLUMNS
    assert [r["concurrency"] for r in table] == [1, 3] and len(rows) == 2
    pairs = opening_pairs(load_records(sharegpt_file))
    samples = sample_requests(pairs, 6, ByteTokenizer(), seed=0)
    for r in table:
        assert r["num_prompts"] == 6 and r["max_batch_size"] == 4
        # every level serves the same requests, each its reference answer's length (ignore_eos)
        assert r["prompt_tokens"] == sum(s.prompt_len for s in samples)
        assert r["completion_tokens"] == sum(s.completion_len for s in samples)
        assert r["cached_prompt_tokens"] == 0  # the prefix cache is cleared between levels
        assert r["elapsed_s"] > 0 and r["completion_tok_s"] > 0
        assert math.isclose(r["completion_tok_s"], r["completion_tokens"] / r["elapsed_s"],
                            rel_tol=1e-3)  # fmt: skip
        assert r["total_tok_s"] > r["completion_tok_s"]
        assert math.isclose(r["rpm"], 60 * r["rps"], rel_tol=1e-3)
        assert math.isclose(r["rps"], 6 / r["elapsed_s"], rel_tol=1e-3)
        assert 0 < r["ftl_min_s"] <= r["ftl_avg_s"] <= r["ftl_max_s"] < r["elapsed_s"]
        lat = [r[f"token_latency_p{p}_s"] for p in (50, 75, 95, 99)]
        assert 0 < lat[0] and lat == sorted(lat)
        assert r["model"] == "internlm-tiny" and r["device"].startswith("cpu")
        assert "torch" in r["versions"]
    if _has_matplotlib():
        assert csv_path.with_suffix(".png").stat().st_size > 10_000


def test_more_prompts_than_the_data_has(tmp_path, sharegpt_file):
    cfg = bench_config(tmp_path, sharegpt_file, "num_prompts=50", "concurrency=[2]")
    with pytest.raises(ValueError, match="lower num_prompts"):
        request_throughput.run(cfg)


@pytest.mark.slow
def test_multirun_sweep_collects_one_csv_and_plot(tmp_path, sharegpt_file):
    """`nybble-bench -m ... engine.max_batch_size=1,2`: one job per value, one sweep CSV."""
    cmd = [
        str(Path(sys.executable).with_name("nybble-bench")), "-m", "task=request_throughput",
        *TINY, f"dataset.path={sharegpt_file}", f"output_dir={tmp_path}", "num_prompts=3",
        "concurrency=[2]", "warmup_rounds=0", "engine.max_batch_size=1,2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep_csv,) = tmp_path.glob("multirun/*/request_throughput-sweep.csv")
    table = read_csv(sweep_csv)
    assert [r["job"] for r in table] == [0, 1]
    assert [r["max_batch_size"] for r in table] == [1, 2]
    assert all("engine.max_batch_size=" in r["overrides"] for r in table)
    assert list(table[0])[1:] == request_throughput.COLUMNS
    if _has_matplotlib():
        assert sweep_csv.with_suffix(".png").stat().st_size > 10_000


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
