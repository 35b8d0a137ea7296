"""The terminal chat frontend: one prompt per line, answers streamed as they are generated.

Commands typed instead of a prompt: ``exit`` quits, ``reset`` (or ``end``) starts a new
conversation. End of input (Ctrl-D, a closed pipe) quits too. Sampling follows ``cfg.sampling``
(applied by the LLM).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

EXIT_COMMANDS = ("exit",)
RESET_COMMANDS = ("reset", "end")


def launch(llm: Any, cfg: Any, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """Chat with ``llm`` until ``exit`` or end of input."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stdout.write(f"nybble chat · {cfg.model.name} · 'reset' starts over, 'exit' quits\n")
    messages: list[dict[str, str]] = []
    while True:
        stdout.write("\nuser> ")
        stdout.flush()
        line = stdin.readline()
        if not line:  # end of input
            stdout.write("\n")
            return
        prompt = line.strip()
        if not prompt:
            continue
        if prompt in EXIT_COMMANDS:
            return
        if prompt in RESET_COMMANDS:
            messages.clear()
            stdout.write("(new conversation)\n")
            continue
        messages.append({"role": "user", "content": prompt})
        stdout.write("assistant> ")
        answer = []
        for out in llm.chat(messages, stream=True):
            delta = out.outputs[0].delta_text
            if delta:
                stdout.write(delta)
                stdout.flush()
                answer.append(delta)
        stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(answer)})
