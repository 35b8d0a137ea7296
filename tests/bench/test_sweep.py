"""bench/sweep.py: CSV round trips, sweeps collected from job folders, PNGs redrawn from CSV."""

from __future__ import annotations

import pytest

from bench import api_serving, request_throughput, sweep


def rows(concurrency: list[int], batch: int, overrides: str) -> list[dict]:
    return [
        {c: 1.0 for c in request_throughput.COLUMNS}
        | {"concurrency": k, "max_batch_size": batch, "completion_tok_s": 10.0 * k + batch,
           "model": "internlm-tiny", "device": "cpu (x86_64)", "versions": "torch x",
           "overrides": overrides}
        for k in concurrency
    ]  # fmt: skip


def test_csv_round_trip(tmp_path):
    path = tmp_path / "request_throughput-cpu.csv"
    table = rows([1, 8], 16, "a=1 b=x")
    sweep.write_csv(table, request_throughput.COLUMNS, path)
    back = sweep.read_csv(path)
    assert [r["concurrency"] for r in back] == [1, 8]  # ints stay ints
    assert back[1]["completion_tok_s"] == 96.0 and back[0]["overrides"] == "a=1 b=x"
    sweep.write_csv([{"x": float("inf"), "y": float("nan")}], ["x", "y"], path)
    (r,) = sweep.read_csv(path)
    assert r["x"] == float("inf") and r["y"] != r["y"]


def test_swept_keys_are_those_that_differ():
    table = [{"overrides": "task=t engine.max_batch_size=16"},
             {"overrides": "task=t engine.max_batch_size=32"}]  # fmt: skip
    assert sweep.swept(table) == {"engine.max_batch_size": ["16", "32"]}
    assert sweep.swept([{"overrides": ""}, {"overrides": ""}]) == {}


def test_collect_merges_job_folders(tmp_path):
    for job, batch in enumerate([16, 32, 64]):
        (tmp_path / str(job)).mkdir()
        sweep.write_csv(
            rows([1, 8], batch, f"task=request_throughput engine.max_batch_size={batch}"),
            request_throughput.COLUMNS,
            tmp_path / str(job) / "request_throughput-cpu.csv",
        )
    (tmp_path / "notes").mkdir()  # not a job folder: ignored
    (tmp_path / "notes" / "request_throughput-old.csv").write_text("junk\n")
    out = sweep.collect(tmp_path, "request_throughput")
    table = sweep.read_csv(out)
    assert [r["job"] for r in table] == [0, 0, 1, 1, 2, 2]
    assert [r["max_batch_size"] for r in table] == [16, 16, 32, 32, 64, 64]
    assert list(table[0]) == ["job", *request_throughput.COLUMNS]
    pytest.importorskip("matplotlib")
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert sweep.collect(tmp_path, "api_serving") is None  # no such jobs


def test_redraw_a_csv_from_the_command_line(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "request_throughput-h100.csv"
    sweep.write_csv(rows([1, 8, 16], 16, ""), request_throughput.COLUMNS, path)
    row = {c: 2.0 for c in api_serving.COLUMNS} | {"mode": "closed", "concurrency": 4,
                                                   "failed": 1, "top_error": "HTTP 500: x"}  # fmt: skip
    sweep.write_csv([row], api_serving.COLUMNS, tmp_path / "api_serving-h100.csv")
    sweep.main([str(path), str(tmp_path / "api_serving-h100.csv")])
    assert path.with_suffix(".png").exists()
    assert (tmp_path / "api_serving-h100.png").exists()
    with pytest.raises(SystemExit, match="neither a sweep folder nor a CSV"):
        sweep.main([str(tmp_path / "missing.csv")])
    with pytest.raises(SystemExit, match="no job folders"):
        sweep.main([str(tmp_path)])
