"""The terminal chat scripted: prompts on stdin (not a terminal), blank-line separated; only the
answers on stdout, plain; notes and warnings on stderr. In-process through ``launch`` and as a
real ``python -m core.cli ... frontend=chat`` with pipes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.compose import compose_config
from core.llm import LLM
from plugins.frontends import chat
from plugins.frontends.chat_conversation import Conversation

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "engine=cpu-small",
    "sampling.temperature=0",
    "sampling.max_new_tokens=4",
    "model.session_len=480",  # the system prompt is ~420 tokens: the long message cannot fit
]
LONG_MESSAGE = "please answer at length: " + "tell me more " * 8
# two lines make one message; blank lines between messages; a command acts without one;
# nothing after exit is read
SCRIPT = f"hello\nthere\n\n\n\n{LONG_MESSAGE}\n\nreset\nhi\n\nexit\nnever sent\n"


@pytest.fixture(scope="module")
def cfg():
    return compose_config(OVERRIDES)


@pytest.fixture(scope="module")
def llm(cfg):
    return LLM(cfg)


def run_script(llm, cfg) -> tuple[str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    chat.launch(llm, cfg, stdin=io.StringIO(SCRIPT), stdout=stdout, stderr=stderr)
    return stdout.getvalue(), stderr.getvalue()


def test_scripted_chat_prints_only_the_answers(llm, cfg):
    out, err = run_script(llm, cfg)

    conv = Conversation(llm, llm.sampling_params())  # the same turns, greedy, by hand
    first = "".join(o.outputs[0].delta_text for o in conv.send(conv.prepare("hello\nthere")))
    conv.reset()
    second = "".join(o.outputs[0].delta_text for o in conv.send(conv.prepare("hi")))
    conv.reset()
    assert out == f"{first}\n\n{second}\n"  # the answers, a blank line between them

    notes = err.splitlines()
    assert notes[0].startswith("nybble chat · internlm-tiny · session_len 480 · temperature 0")
    assert notes[0].endswith("max_new_tokens 4")
    assert notes[1].startswith("warning: message not sent: the conversation holds")
    assert "> session_len=480" in notes[1]
    assert notes[2:] == ["(new conversation)"]
    assert not llm.engine.sessions and not llm.engine.requests  # launch left nothing behind


def test_the_command_through_pipes(llm, cfg, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "FORCE_COLOR")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(":")
    env.update(NYBBLE_PLUGINS="none", TERM="xterm-256color")  # a colour terminal, but a pipe
    args = [sys.executable, "-m", "core.cli", "model=internlm-tiny", "frontend=chat", *OVERRIDES]
    result = subprocess.run(
        args, input=SCRIPT, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == run_script(llm, cfg)  # plain, as in-process
    assert "\x1b" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []
