"""The commands as a user runs them: ``nybble``, ``nybble-convert``, ``nybble-bench``.

Each command runs in a subprocess from an empty folder (which must stay empty: the commands
write no outputs/ or log files there). The installed console scripts are used where they are
beside the running Python; otherwise the same entry points run through ``python -c``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"nybble": "main", "nybble-convert": "convert_main", "nybble-bench": "bench_main"}


def command(name: str) -> list[str]:
    """The console script installed beside this Python, else the same entry point via -c."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return [
        sys.executable,
        "-c",
        f"from core.cli import {ENTRY_POINTS[name]}; {ENTRY_POINTS[name]}()",
    ]


def run(args: list[str], cwd: Path, stdin: str = "", extra_env: dict | None = None):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["NYBBLE_PLUGINS"] = "none"  # third-party plugins installed here must not change the output
    env.update(extra_env or {})
    return subprocess.run(
        args, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=300
    )


def test_help_lists_groups_options_and_examples(tmp_path):
    result = run([sys.executable, "-m", "core.cli", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("nybble: serve 4-bit LLMs")
    assert "model: internlm-chat-20b, internlm-chat-7b, internlm-tiny" in out
    assert "frontend: api, chat, gradio, triton" in out
    assert "quant: auto, awq, none" in out
    assert "max_batch_size: 16" in out  # the settings with their defaults
    assert "nybble model=internlm-tiny frontend=chat" in out
    assert list(tmp_path.iterdir()) == []


def test_cfg_job_prints_the_composed_config(tmp_path):
    args = ["--cfg", "job", "model=internlm-chat-20b", "frontend=api", "frontend.port=8080"]
    result = run([*command("nybble"), *args], tmp_path)
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg["model"]["name"] == "internlm-chat-20b" and cfg["model"]["num_layers"] == 60
    assert cfg["frontend"] == {**cfg["frontend"], "name": "api", "port": 8080}
    assert set(cfg) == {"model", "quant", "kernels", "engine", "sampling", "frontend"}
    assert list(tmp_path.iterdir()) == []


# (command, arguments, words of the one-line message)
BAD = [
    ("nybble", ["model=unknown"], ["model='unknown'", "internlm-chat-20b, internlm-chat-7b, internlm-tiny"]),
    ("nybble", ["frontend=unknown"], ["frontend='unknown'", "api, chat, gradio, triton"]),
    ("nybble", ["engine.max_batch_size=abc"], ["engine.max_batch_size='abc'", "an integer"]),
    ("nybble", ["engine.max_batch_size=-1"], ["engine.max_batch_size=-1", "a positive integer"]),
    ("nybble", ["--cfg", "job", "sampling.top_p=2"], ["sampling.top_p=2", "(0, 1]"]),
    ("nybble", ["-m", "engine.max_batch_size=1,-3"], ["engine.max_batch_size=-3", "positive"]),
    ("nybble-convert", ["model=internlm-tiny"], ["output is required", "output=<value>"]),
    ("nybble-bench", ["task=nope"], ["task='nope'", "expected one of"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "args", "words"), BAD, ids=[" ".join([b[0], *b[1]]) for b in BAD])
def test_bad_values_exit_2_with_one_line(tmp_path, name, args, words):
    result = run([*command(name), *args], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_chat_in_the_terminal(tmp_path):
    """The main job: ``nybble model=internlm-tiny frontend=chat`` answers, resets, exits.

    stdin is a pipe here, so only the answers go to stdout (a blank line between them) and the
    notes to stderr; tests/frontends/test_chat_*.py drive the chat in a pseudo-terminal too."""
    args = ["model=internlm-tiny", "frontend=chat", "engine=cpu-small"]
    args += ["sampling.max_new_tokens=4", "sampling.temperature=0"]
    script = "hello\n\nreset\nhi again\n\nexit\nnot sent\n"
    result = run([*command("nybble"), *args], tmp_path, stdin=script)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("nybble chat · internlm-tiny")
    assert "(new conversation)" in result.stderr
    assert len(result.stdout.rstrip("\n").split("\n\n")) == 2  # two answers, not three
    assert list(tmp_path.iterdir()) == []


def test_a_built_wheel_carries_the_configs(tmp_path):
    """The supported install is `pip install -e .`, but a wheel must work too: conf/ travels
    inside it as package data, and the commands find it there."""
    src = tmp_path / "src"
    for name in ("core", "plugins", "conf", "bench"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    dist, site, cwd = tmp_path / "dist", tmp_path / "site", tmp_path / "cwd"
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src]
    subprocess.run(build, check=True, capture_output=True)
    (wheel,) = dist.glob("nybble-*.whl")
    install = [*pip, "install", "--no-deps", "--no-index", "--target", site, wheel]
    subprocess.run(install, check=True, capture_output=True)
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(PYTHONPATH=str(site), NYBBLE_PLUGINS="none")
    check = (
        "import core.cli as c, os; assert c.__file__.startswith(os.environ['PYTHONPATH']); c.main()"
    )
    args = [sys.executable, "-c", check, "--cfg", "job", "model=internlm-chat-7b"]
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["model"]["bias"] is True


def test_a_missing_checkpoint_is_one_line(tmp_path):
    result = run([*command("nybble"), f"model.path={tmp_path / 'nowhere'}"], tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "nowhere" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
