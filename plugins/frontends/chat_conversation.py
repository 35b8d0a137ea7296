"""One terminal conversation kept as a server-side session on the engine's prefix cache.

Each turn sends only the new user message; the engine appends it to the session's tokens so
far (earlier prompts and answers). Before a turn is sent, ``prepare`` counts its tokens exactly
as the engine will and refuses, with a message that says what to do, a turn that would not fit in
``session_len``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from core.outputs import RequestOutput
from core.sampling_params import SamplingParams


class TurnTooLong(Exception):
    """The next turn would exceed ``session_len``; nothing was sent. The message says by how
    many tokens and how to go on."""


class Conversation:
    """A multi-turn chat with ``llm`` (a ``core.llm.LLM``) under fixed ``sampling``."""

    def __init__(self, llm: Any, sampling: SamplingParams) -> None:
        self.llm = llm
        self.sampling = sampling
        self._ids = itertools.count()
        self.session_id = f"chat-{next(self._ids)}"
        # the token ids that close an answer; a turn after a cut answer (Ctrl-C, max_new_tokens)
        # sends them first, so the next prompt reads as the template expects
        self._eoa_ids = llm.tokenizer.encode(llm.template.eoa) if llm.template.eoa else []

    @property
    def session_len(self) -> int:
        return self.llm.engine.session_len

    @property
    def history(self) -> list[int]:
        """The session's token ids so far: every prompt and answer of this conversation."""
        return self.llm.engine.sessions.get(self.session_id, [])

    @property
    def num_tokens(self) -> int:
        return len(self.history)

    def reset(self) -> None:
        """Forget the conversation: the next message starts a new session."""
        self.llm.end_session(self.session_id)
        self.session_id = f"chat-{next(self._ids)}"

    def prompt_for(self, user_text: str) -> str:
        """The text this turn appends to the session (the whole chat prompt on the first turn)."""
        template = self.llm.template
        history = self.history
        if not history:
            return template.render([{"role": "user", "content": user_text}])
        n = len(self._eoa_ids)
        closed = not n or history[-n:] == self._eoa_ids
        return ("" if closed else template.eoa) + template.render_next_turn(user_text)

    def prepare(self, user_text: str) -> list[int]:
        """The token ids of the next turn; raises TurnTooLong when history + turn + the longest
        answer (``max_tokens``) would exceed ``session_len``."""
        ids = self.llm.tokenizer.encode(self.prompt_for(user_text))
        used, answer, limit = self.num_tokens, self.sampling.max_tokens, self.session_len
        needed = used + len(ids) + (answer or 1)
        if needed <= limit:
            return ids
        held = f"the conversation holds {used} tokens, " if used else ""
        longest = f"the answer may take up to {answer}" if answer else "the answer needs 1"
        fixes = []
        if used and len(ids) + (answer or 1) <= limit:
            fixes.append("type 'reset' to start a new conversation")
        fixes.append("shorten the message")
        if answer:
            fixes.append("lower sampling.max_new_tokens")
        fixes.append("raise model.session_len")
        raise TurnTooLong(
            f"message not sent: {held}this message adds {len(ids)} and {longest}: "
            f"{needed} > session_len={limit}. To go on, {', '.join(fixes[:-1])} or {fixes[-1]}."
        )

    def send(self, turn_ids: list[int]) -> Iterator[RequestOutput]:
        """Stream the answer to a prepared turn; closing the iterator early aborts the request
        (the partial answer stays in the conversation)."""
        return self.llm.stream(turn_ids, self.sampling, session_id=self.session_id)
