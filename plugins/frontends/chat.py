"""The terminal chat frontend (``nybble frontend=chat``), LMDeploy's ``chat`` done well.

Type a message over one or more lines; an empty line sends it, and the answer streams in as it
is generated. Commands typed as the first line: ``exit`` quits, ``end`` or ``reset`` starts a new
conversation. Ctrl-C stops the current answer (the request is aborted, the conversation goes on);
a second Ctrl-C (at the prompt, or twice quickly) quits, as do ``exit`` and Ctrl-D. A message
that would take the conversation past ``model.session_len`` is not sent: a warning says why and
what to do. With stdin not a terminal (a pipe, a file), prompts are read blank-line separated
and only the answers are printed, so the chat can be scripted. Sampling follows ``cfg.sampling``,
e.g. ``nybble frontend=chat sampling.temperature=0.2 sampling.max_new_tokens=256``.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import sys
import threading
from typing import Any, TextIO

from core.engine import RequestError
from plugins.frontends.chat_conversation import Conversation, TurnTooLong
from plugins.frontends.chat_input import EXIT_COMMANDS, RESET_COMMANDS, MessageReader
from plugins.frontends.chat_view import ChatView

HELP = (
    "Type a message; an empty line sends it. 'reset' (or 'end') starts a new conversation, "
    "'exit' quits. Ctrl-C stops an answer; Ctrl-C twice quits."
)


class Chat:
    """The read-answer loop over a ``Conversation``, a ``MessageReader`` and a ``ChatView``."""

    def __init__(self, conversation: Conversation, reader: MessageReader, view: ChatView) -> None:
        self.conversation = conversation
        self.reader = reader
        self.view = view
        self.interrupts = 0  # Ctrl-C presses since the last message or command

    def run(self) -> None:
        """Chat until ``exit``, end of input or a second Ctrl-C."""
        while True:
            try:
                text = self.reader.read()
                if text is None or text in EXIT_COMMANDS:
                    return
                self.interrupts = 0
                if text in RESET_COMMANDS:
                    self.conversation.reset()
                    self.view.note("(new conversation)")
                else:
                    self.answer(text)
            except KeyboardInterrupt:
                self.view.interrupted()
                if self.interrupts:
                    return
                self.interrupts = 1
                self.view.note("(Ctrl-C again, 'exit' or Ctrl-D quits)")

    def answer(self, text: str) -> None:
        """Send one message and stream the answer; Ctrl-C stops it at the next token."""
        try:
            turn = self.conversation.prepare(text)
        except TurnTooLong as e:
            self.view.warning(str(e))
            return
        stream = self.conversation.send(turn)
        # closing(stream) inside: the abort runs before Ctrl-C raises again
        with self._deferred_interrupt(), contextlib.closing(stream):
            try:
                first = next(stream, None)  # the engine checks the request here
            except RequestError as e:  # a limit prepare does not know, e.g. the KV cache size
                self.view.warning(f"message not sent: {e}")
                return
            self.view.answer_start()
            for out in itertools.chain([first] if first else [], stream):
                self.view.answer_delta(out.outputs[0].delta_text)
                if self.interrupts:
                    break  # closing the stream aborts the request
        if self.interrupts > 1:  # Ctrl-C twice while answering: quit (run() sees interrupts)
            raise KeyboardInterrupt
        conv = self.conversation
        self.view.answer_end(f"({conv.num_tokens}/{conv.session_len} tokens)")
        if self.interrupts:
            self.view.note("(answer stopped · Ctrl-C again quits)")

    @contextlib.contextmanager
    def _deferred_interrupt(self):
        """While streaming, Ctrl-C only counts in ``interrupts``: the loop stops the answer
        between engine steps, never inside one. A third press leaves at once (an engine step
        that does not return)."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return

        def on_sigint(signum, frame):
            self.interrupts += 1
            if self.interrupts >= 3:
                raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _title(llm: Any, conversation: Conversation) -> str:
    s = conversation.sampling
    sampling = f"temperature {s.temperature} · top_p {s.top_p} · top_k {s.top_k}"
    return (
        f"nybble chat · {llm.model_name} · session_len {conversation.session_len} · "
        f"{sampling} · max_new_tokens {s.max_tokens}"
    )


def launch(
    llm: Any,
    cfg: Any,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> None:
    """Chat with ``llm`` (a ``core.llm.LLM``) on the terminal, or answer prompts from a pipe.

    ``cfg`` is the composed config the LLM was built from; its ``sampling`` group is already the
    LLM's default, so command-line overrides apply to every answer.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    interactive = stdin.isatty()
    view = ChatView(stdout, stderr, interactive)
    conversation = Conversation(llm, llm.sampling_params())
    reader = MessageReader(stdin, stdout, view.prompt, interactive)
    view.banner(_title(llm, conversation), HELP)
    try:
        Chat(conversation, reader, view).run()
    finally:
        conversation.reset()  # frees the session's KV blocks for whoever uses the LLM next
