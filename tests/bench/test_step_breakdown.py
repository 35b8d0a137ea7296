"""step_breakdown end to end on the CPU with the tiny model: phases add up to the step."""

from __future__ import annotations

import csv
import math

from bench import step_breakdown
from core.compose import compose_config


def test_step_breakdown_times_every_phase_of_a_decode_step(tmp_path):
    cfg = compose_config(
        [
            "task=step_breakdown",
            "model=internlm-tiny",
            "engine.device=cpu",
            "concurrency=[1,3]",
            "token_pairs=[[12,5]]",
            f"output_dir={tmp_path}",
        ],
        config_name="bench",
    )
    rows = step_breakdown.run(cfg)
    (path,) = tmp_path.glob("step_breakdown-*.csv")
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert [int(r["batch"]) for r in table] == [1, 3]
    assert list(table[0]) == step_breakdown.COLUMNS
    for r in rows:
        assert r["steps"] == 5 and r["step_ms"] > 0
        # each phase lies inside its step, so its median cannot pass the steps' median; the sum
        # of medians can, a little, when steps vary
        for p in step_breakdown.PHASES:
            assert 0 <= r[f"{p}_ms"] <= r["step_ms"]
        assert 0 < sum(r[f"{p}_ms"] for p in step_breakdown.PHASES) <= r["step_ms"] * 1.5
        assert r["execute_ms"] > 0 and r["sample_ms"] > 0
        assert math.isnan(r["graph_ms"])  # no CUDA graph on the CPU
    assert math.isnan(r["gpu_idle_ms"])  # nor a device timeline


def test_busy_time_is_the_length_of_the_union_of_the_intervals():
    # overlapping, nested, touching and disjoint spans, unsorted
    spans = [(5.0, 6.0), (0.0, 2.0), (1.0, 3.0), (5.5, 5.7), (3.0, 4.0), (10.0, 10.5)]
    assert step_breakdown.busy_time(spans) == 4.0 + 1.0 + 0.5
    assert step_breakdown.busy_time([]) == 0.0
