"""Reading chat messages: lines up to a blank line, from a terminal or from a pipe.

As in LMDeploy's ``chat``: the user types lines and an empty line sends them. A command
(``exit``, ``end``, ``reset``) typed as the first line of a message acts at once, without the
blank line. End of input (Ctrl-D, the end of a pipe) sends what was typed and then ends.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import TextIO

EXIT_COMMANDS = ("exit",)
RESET_COMMANDS = ("end", "reset")
COMMANDS = EXIT_COMMANDS + RESET_COMMANDS

# an SGR colour sequence in a prompt; readline must be told it takes no room on the line
_SGR = re.compile(r"(\x1b\[[0-9;]*m)")


class MessageReader:
    """``read()`` returns the next message, a command, or None at the end of input.

    ``prompt(first)`` gives the marker to show before the first line of a message and before
    each further line; with ``interactive`` off (a pipe) no marker is shown. On a real terminal
    (``stdin`` is ``sys.stdin`` and a tty) lines come from ``input()``, so readline's editing and
    history work.
    """

    def __init__(
        self,
        stdin: TextIO,
        stdout: TextIO,
        prompt: Callable[[bool], str],
        interactive: bool,
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.prompt = prompt
        self.interactive = interactive
        self.ended = False  # a terminal's Ctrl-D is not sticky: remember it
        self.use_readline = interactive and stdin is sys.stdin and stdout is sys.stdout
        if self.use_readline:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:  # not on every platform; input() still works without it
                pass

    def read(self) -> str | None:
        """The next message (its lines joined by newlines), a command, or None at end of input."""
        lines: list[str] = []
        while not self.ended:
            line = self._line(first=not lines)
            if line is None:
                self.ended = True
                break
            if not line.strip():
                if lines:
                    return "\n".join(lines)
                continue  # blank lines before a message send nothing
            if not lines and line.strip() in COMMANDS:
                return line.strip()
            lines.append(line)
        return "\n".join(lines) if lines else None

    def _line(self, first: bool) -> str | None:
        marker = self.prompt(first) if self.interactive else ""
        if self.use_readline:
            try:
                return input(_SGR.sub("\001\\1\002", marker))
            except EOFError:
                self.stdout.write("\n")
                return None
        if marker:
            self.stdout.write(marker)
            self.stdout.flush()
        line = self.stdin.readline()
        return line.rstrip("\r\n") if line else None
