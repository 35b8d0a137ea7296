"""What the terminal chat prints: rich (markers, colour) on a terminal, plain text in a pipe.

Interactive (stdin is a terminal): everything goes to stdout, with ``user›`` / ``assistant›``
markers and a token count after each answer. Scripted (stdin is a pipe): stdout carries only the
answers, separated by blank lines, and notes and warnings go to stderr. rich writes no escape
codes to a file that is not a terminal, so the same calls give plain text in a pipe.
"""

from __future__ import annotations

from typing import TextIO

from rich.console import Console
from rich.text import Text

USER_MARKER = "user› "
ASSISTANT_MARKER = "assistant› "
CONTINUATION_MARKER = "    … "


def _console(file: TextIO) -> Console:
    # soft_wrap: streamed text must not get line breaks rich would add at the console width
    return Console(file=file, soft_wrap=True, highlight=False, markup=False, emoji=False)


class ChatView:
    """The chat's output on ``stdout`` / ``stderr``."""

    def __init__(self, stdout: TextIO, stderr: TextIO, interactive: bool) -> None:
        self.out = _console(stdout)
        self.interactive = interactive
        self.notes = self.out if interactive else _console(stderr)
        self._answers = 0

    def banner(self, title: str, help_text: str) -> None:
        self.notes.print(title, style="bold")
        if self.interactive:
            self.notes.print(help_text, style="dim")

    def prompt(self, first: bool) -> str:
        """The marker before a line of input, with colour codes on a terminal."""
        text = Text(USER_MARKER if first else CONTINUATION_MARKER, style="bold green")
        if first:
            text = Text("\n") + text
        with self.out.capture() as captured:
            self.out.print(text, end="")
        return captured.get()

    def answer_start(self) -> None:
        if self.interactive:
            self.out.print(ASSISTANT_MARKER, style="bold cyan", end="")
        elif self._answers:
            self.out.print()  # a blank line between answers, as between the prompts
        self._answers += 1

    def answer_delta(self, text: str) -> None:
        self.out.print(text, end="")

    def answer_end(self, status: str) -> None:
        """End the answer's line; a terminal also shows ``status`` (e.g. the token count)."""
        self.out.print()
        if self.interactive:
            self.out.print(status, style="dim")

    def note(self, text: str) -> None:
        self.notes.print(text, style="dim")

    def warning(self, text: str) -> None:
        self.notes.print(Text("warning: ", style="bold yellow") + Text(text, style="yellow"))

    def interrupted(self) -> None:
        """After Ctrl-C at the prompt: leave the half-typed line."""
        if self.interactive:
            self.out.print()
