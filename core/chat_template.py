"""Chat templates: the strings that turn a conversation into a prompt.

A model plugin builds one ``ChatTemplate`` per template and registers it through the
``register_chat_templates`` hook (core/hookspecs.py); ``model.chat_template`` selects it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    """The strings of one chat format (field names follow LMDeploy's templates).

    A conversation renders as::

        {bos}{system}{system text}{eosys}                         once, at the start
        {user}{user text}{eoh}                                    each user message
        {assistant}{answer}{eoa}{separator}                       each assistant message (history)
        {assistant}                                               the generation prompt

    For InternLM that gives ``<s><|System|>:{meta}\\n<|User|>:{u}\\n<|Bot|>:{a}<eoa>\\n...``.
    The model ends an answer with ``eoa``; a session's next turn is ``render_next_turn``, which
    starts with ``separator``. So the rendering of a conversation extended by one
    (answer, user message) pair starts with the previous rendering + answer + ``eoa``: a server that
    re-renders the whole conversation each turn hits the prefix cache for the earlier turns.
    """

    name: str
    system: str  # opens the system message
    eosys: str  # ends the system message
    user: str  # opens a user message
    eoh: str  # ends a user message ("end of human")
    assistant: str  # opens an assistant message; also the generation prompt
    eoa: str  # ends an assistant message ("end of answer"); the model generates it
    separator: str  # between an answer's eoa and the next user message
    meta_instruction: str  # the default system text, used when no system message is given
    bos: str = ""  # beginning of the conversation, e.g. "<s>" (the tokenizer maps it to its id)
    stop_words: tuple[str, ...] = ()  # generation stops on these strings
    stop_token_ids: tuple[int, ...] = ()  # and on these ids

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt for OpenAI-style ``messages`` (dicts with ``role`` and ``content``).

        An optional first ``system`` message replaces ``meta_instruction``; ``user`` and
        ``assistant`` messages follow in any order (assistant messages render as finished
        answers). ``add_generation_prompt`` appends ``assistant`` so the model answers next.
        Raises ValueError for an empty list, an unknown role, a system message that is not first
        or content that is not text.
        """
        if not messages:
            raise ValueError(f"chat template {self.name!r}: messages is empty; give a user message")
        system_text = self.meta_instruction
        body = messages
        if _role(messages[0], 0) == "system":
            system_text = _content(messages[0], 0)
            body = messages[1:]
        parts = [self.bos, self.system, system_text, self.eosys]
        for k, message in enumerate(body, start=len(messages) - len(body)):
            role, text = _role(message, k), _content(message, k)
            if role == "user":
                parts += [self.user, text, self.eoh]
            elif role == "assistant":
                parts += [self.assistant, text, self.eoa, self.separator]
            else:
                raise ValueError(
                    f"chat template {self.name!r}: message {k} has role 'system'; a system "
                    "message is only allowed first"
                )
        if add_generation_prompt:
            parts.append(self.assistant)
        return "".join(parts)

    def render_next_turn(self, user_text: str) -> str:
        """What a session appends after the model's answer (which ended with ``eoa``) for the next
        user message: ``separator + user + text + eoh + assistant``."""
        return f"{self.separator}{self.user}{user_text}{self.eoh}{self.assistant}"

    def resolve_stop_token_ids(self, tokenizer: Tokenizer) -> tuple[int, ...]:
        """``stop_token_ids`` plus the ids of stop words that are single special tokens of
        ``tokenizer`` (e.g. ``<eoa>``), without duplicates."""
        ids = list(self.stop_token_ids)
        for word in self.stop_words:
            if word in tokenizer.special_tokens:
                ids.append(tokenizer.special_tokens[word])
        return tuple(dict.fromkeys(ids))


def _role(message: dict[str, Any], index: int) -> str:
    role = message.get("role") if isinstance(message, dict) else None
    if role not in ROLES:
        raise ValueError(
            f"message {index} has role {role!r}; expected one of {', '.join(ROLES)}"
            if isinstance(message, dict)
            else f"message {index} is {type(message).__name__}, expected a dict with role/content"
        )
    return role


def _content(message: dict[str, Any], index: int) -> str:
    """The text of a message: a string, or OpenAI content parts of type "text" (joined)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise ValueError(
        f"message {index} ({message.get('role')}) has content {content!r}; expected a string or "
        'a list of {"type": "text", "text": ...} parts'
    )
