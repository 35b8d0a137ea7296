"""``nybble frontend=chat`` in a pseudo-terminal, as a user sees it: markers and colour, answers
streaming in, the token count, the session_len warning, reset, Ctrl-C, exit.

The tiny model has random weights and a byte tokenizer: its answers are noise, the flow is real.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from core.tokenizer import ByteTokenizer
from plugins.models.internlm.chat_template import INTERNLM_CHAT

pexpect = pytest.importorskip("pexpect")

ROOT = Path(__file__).resolve().parents[2]
# colour/cursor sequences (rich, readline's bracketed paste) and readline's prompt markers
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|[\x01\x02]")


class Terminal:
    """``python -m core.cli ...`` on a pty; ``expect`` searches the screen text (escape codes
    removed) past the previous match and fails showing what the screen held."""

    def __init__(self, *overrides: str, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
        env.update(TERM="xterm-256color", NYBBLE_PLUGINS="none")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(":")
        args = ["-m", "core.cli", "model=internlm-tiny", "frontend=chat", "engine=cpu-small"]
        self.child = pexpect.spawn(
            sys.executable, [*args, *overrides], cwd=tmp_path, env=env,
            dimensions=(40, 250), encoding="utf-8", codec_errors="replace",
        )  # fmt: skip
        self.raw = ""
        self.pos = 0

    @property
    def screen(self) -> str:
        return ESCAPES.sub("", self.raw).replace("\r\n", "\n")

    def expect(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = re.compile(pattern).search(self.screen, self.pos)
            if match:
                self.pos = match.end()
                return match
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise pexpect.TIMEOUT("")
                self.raw += self.child.read_nonblocking(4096, timeout=min(left, 1))
            except pexpect.TIMEOUT:
                if left <= 0:
                    pytest.fail(f"no {pattern!r} in {timeout} s; the screen:\n{self.screen}")
            except pexpect.EOF:
                pytest.fail(f"the chat ended before {pattern!r}; the screen:\n{self.screen}")

    def send_message(self, *lines: str) -> None:
        """Type ``lines`` and the empty line that sends them."""
        for line in lines:
            self.expect(r"(user›|    …) $")
            self.child.sendline(line)
        self.expect(r"    … $")
        self.child.sendline("")

    def answer(self) -> int:
        """Wait for an answer to finish; the session's token count shown after it."""
        return int(self.expect(r"assistant› [^\n]*\n\((\d+)/\d+ tokens\)").group(1))

    def exit_status(self) -> int:
        self.child.expect(pexpect.EOF, timeout=30)
        self.child.close()
        return self.child.exitstatus


def test_a_conversation_in_the_terminal(tmp_path):
    term = Terminal(
        "sampling.temperature=0", "sampling.max_new_tokens=4", "model.session_len=480",
        tmp_path=tmp_path,
    )  # fmt: skip
    term.expect(r"nybble chat · internlm-tiny · session_len 480 · temperature 0\.0 ")
    term.expect(r"max_new_tokens 4\nType a message; an empty line sends it")

    term.send_message("hello", "there")  # two lines, one message
    first = term.answer()
    term.send_message("and more")
    second = term.answer()
    assert first < second < 480  # the second turn came on top of the first

    term.send_message("please answer at length: " + "tell me more " * 8)
    warning = term.expect(r"warning: message not sent: [^\n]*\n").group(0)
    assert f"the conversation holds {second} tokens" in warning
    assert "> session_len=480" in warning and "type 'reset'" in warning
    assert "assistant›" not in term.screen[term.pos - len(warning) :]  # nothing was asked

    term.expect(r"user› $")
    term.child.sendline("reset")  # a command acts at once, no blank line needed
    term.expect(r"\(new conversation\)")
    term.send_message("hello", "there")
    assert term.answer() == first  # a new conversation holds the first turn only

    assert "\x1b[" in term.raw  # rich coloured the markers
    term.expect(r"user› $")
    term.child.sendintr()  # Ctrl-C at the prompt warns ...
    term.expect(r"\(Ctrl-C again, 'exit' or Ctrl-D quits\)\n")
    term.expect(r"user› $")
    term.child.sendintr()  # ... and a second one quits
    assert term.exit_status() == 0
    assert "Traceback" not in term.screen and list(tmp_path.iterdir()) == []


def test_ctrl_c_stops_an_answer_and_twice_quits(tmp_path):
    term = Terminal("sampling.temperature=0", "sampling.max_new_tokens=200", tmp_path=tmp_path)
    term.send_message("hello")
    term.expect(r"assistant› \S")  # the answer is arriving
    term.child.sendintr()
    stopped = term.expect(r"\n\((\d+)/2048 tokens\)\n\(answer stopped · Ctrl-C again quits\)")
    prompt = INTERNLM_CHAT.render([{"role": "user", "content": "hello"}])
    prompt_tokens = len(ByteTokenizer().encode(prompt))  # the tiny model's tokenizer
    # the partial answer stays in the conversation: some tokens, far fewer than 200
    assert prompt_tokens < int(stopped.group(1)) < prompt_tokens + 100

    term.send_message("go on")  # the conversation is still usable
    term.expect(r"assistant› \S")
    term.child.sendintr()
    time.sleep(0.3)  # (two presses within one engine step reach Python as one signal)
    term.child.sendintr()  # twice quickly: quit
    assert term.exit_status() == 0
    assert "Traceback" not in term.screen
