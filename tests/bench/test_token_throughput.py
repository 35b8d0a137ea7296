"""token_throughput end to end on the CPU with the tiny model: the table a user reads."""

from __future__ import annotations

import csv

from bench import token_throughput
from core.compose import compose_config


def test_token_throughput_writes_the_seed_columns_with_sane_values(tmp_path):
    cfg = compose_config(
        [
            "task=token_throughput",
            "model=internlm-tiny",
            "engine.device=cpu",
            "concurrency=[1,3]",
            "token_pairs=[[12,6]]",
            "baseline_batches=[]",
            "test_rounds=1",
            "warmup_rounds=1",
            f"output_dir={tmp_path}",
        ],  # fmt: skip
        config_name="bench",
    )
    rows = token_throughput.run(cfg)
    (csv_path,) = tmp_path.glob("token_throughput-*.csv")
    assert (tmp_path / csv_path.name.replace(".csv", ".png")).exists()
    with csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert [int(r["batch"]) for r in table] == [1, 3]
    for r, raw in zip(table, rows):
        assert set(token_throughput.COLUMNS) <= set(r)
        assert int(r["prompt_tokens"]) == 12 and int(r["completion_tokens"]) == 6
        assert float(r["thr_per_proc"]) > 0 and float(r["rpm"]) > 0
        assert 0 < float(r["ftl_min"]) <= float(r["ftl_avg"]) <= float(r["ftl_max"])
        p = [float(r[f"token_latency_p{q}"]) for q in (50, 75, 95, 99)]
        assert p == sorted(p) and p[0] > 0
        assert 0 < raw["frac_limit"] and float(r["mem_per_proc"]) > 0


def test_token_throughput_fills_one_table_over_several_invocations(tmp_path):
    """A table split over calls (one GPU call cannot hold all 16 runs): earlier rows for other
    runs stay, a rerun of the same (batch, prompt, completion) replaces its row."""

    def invoke(concurrency: str, pairs: str) -> list[dict]:
        cfg = compose_config(
            ["task=token_throughput", "model=internlm-tiny", "engine.device=cpu",
             f"concurrency={concurrency}", f"token_pairs={pairs}", "baseline_batches=[]",
             "test_rounds=1", "warmup_rounds=0", f"output_dir={tmp_path}"],
            config_name="bench",
        )  # fmt: skip
        token_throughput.run(cfg)
        (path,) = tmp_path.glob("token_throughput-*.csv")
        with path.open() as f:
            return list(csv.DictReader(f))

    table = invoke("[1,2]", "[[8,4]]")
    # as a GPU run leaves it: the transformers ratio on the batch-1 row only, blank elsewhere
    (path,) = tmp_path.glob("token_throughput-*.csv")
    table[0].update(hf_fp16_tok_s="50.5", speedup_vs_hf="1.5")
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    table = invoke("[2]", "[[8,4],[16,4]]")
    runs = [(int(r["batch"]), int(r["prompt_tokens"])) for r in table]
    assert runs == [(1, 8), (2, 8), (2, 16)]  # sorted by prompt, completion, batch
    assert (table[0]["hf_fp16_tok_s"], table[0]["speedup_vs_hf"]) == ("50.5", "1.5")
    assert table[1]["hf_fp16_tok_s"] == table[2]["speedup_vs_hf"] == ""
    before = {(int(r["batch"]), int(r["prompt_tokens"])): r["thr_per_proc"] for r in table}
    table = invoke("[1]", "[[8,4]]")
    assert len(table) == 3
    after = {(int(r["batch"]), int(r["prompt_tokens"])): r["thr_per_proc"] for r in table}
    assert after[(2, 16)] == before[(2, 16)]  # untouched rows keep their numbers exactly


def test_token_throughput_prompts_never_come_from_the_prefix_cache(tmp_path):
    """Every run and round draws new prompts: a timed first token is always a full prefill, even
    where two pairs share a prompt length (512/512 then 512/1024 in the seed's table)."""
    cfg = compose_config(
        ["task=token_throughput", "model=internlm-tiny", "engine.device=cpu",
         "engine.enable_prefix_caching=true", "concurrency=[1,2]", "token_pairs=[[32,4],[32,6]]",
         "baseline_batches=[]", "test_rounds=2", "warmup_rounds=1", f"output_dir={tmp_path}"],
        config_name="bench",
    )  # fmt: skip
    rows = token_throughput.run(cfg)
    assert [r["cached_prompt_tokens"] for r in rows] == [0, 0, 0, 0]
    (csv_path,) = tmp_path.glob("token_throughput-*.csv")
    with csv_path.open() as f:
        assert [r["cached_prompt_tokens"] for r in csv.DictReader(f)] == ["0"] * 4
