"""Streaming token ids -> text deltas that are always whole UTF-8 characters.

Per request the engine keeps one ``IncrementalDetokenizer``; every ``step`` decodes only a small
window of recent ids (vLLM's prefix_offset/read_offset scheme), so a step costs O(new tokens),
not O(answer). The window's leading tokens give the subword decoder its context (SentencePiece
models that drop a leading "▁" on the first piece decode the window and its prefix alike).
Byte-fallback ids that begin a character still missing bytes are held back until it completes.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.tokenizer import Tokenizer

# Prompt ids kept as decoding context for the first answer tokens (vLLM uses the same 5).
PROMPT_CONTEXT_TOKENS = 5
# A UTF-8 character is at most 4 bytes, so at most 3 trailing bytes can still be waiting for more.
MAX_INCOMPLETE_BYTES = 3


# Well-formed UTF-8 (Unicode table 3-7): lead byte -> (sequence length, range of the 2nd byte).
_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}


def _is_incomplete_utf8(data: bytes) -> bool:
    """True when ``data`` is the start of one UTF-8 character that more bytes could complete."""
    lead = data[0]
    if 0xC2 <= lead <= 0xDF:
        length = 2
    elif 0xE0 <= lead <= 0xEF:
        length = 3
    elif 0xF0 <= lead <= 0xF4:
        length = 4
    else:
        return False
    if len(data) >= length:
        return False
    for k, b in enumerate(data[1:], start=1):
        lo, hi = _SECOND_BYTE.get(lead, (0x80, 0xBF)) if k == 1 else (0x80, 0xBF)
        if not lo <= b <= hi:
            return False
    return True


class IncrementalDetokenizer:
    """Turns the ids a request generates into text deltas.

    ``"".join(step(...) for each batch of ids) + flush()`` equals
    ``tokenizer.decode(generated_ids, skip_special_tokens)`` when ``prompt_ids`` is None (with a
    prompt, the text the answer adds after the prompt's decoded text). A delta never ends inside
    a character: byte-fallback ids (``<0xE4>``...) that open a character are held back until the
    character is complete. U+FFFD appears only for bytes no later byte can repair (a truncated
    character followed by another token, an invalid byte), or for a tail still incomplete at
    ``flush``. A character split between the prompt's last ids and the answer is emitted whole,
    in the answer.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] | None = None,
        skip_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._skip = tokenizer.special_ids if skip_special_tokens else frozenset()
        context = [i for i in (prompt_ids or ())[-PROMPT_CONTEXT_TOKENS:] if i not in self._skip]
        # The window: already emitted ids kept as decoding context, then ids not yet emitted.
        self._ids: list[int] = context
        self._read_offset = 0  # ids before it have been emitted
        self._read_offset = len(context) - self._num_incomplete_tail(len(context))

    def step(self, new_token_ids: Sequence[int]) -> str:
        """Add newly generated ids; return the text they complete (maybe "")."""
        self._ids.extend(i for i in new_token_ids if i not in self._skip)
        end = len(self._ids)
        return self._emit(end - self._num_incomplete_tail(end))

    def flush(self) -> str:
        """Text still held back (an unfinished character, as U+FFFD); call once at the end."""
        return self._emit(len(self._ids))

    def _num_incomplete_tail(self, end: int) -> int:
        """How many not-yet-emitted ids before ``end`` are bytes of a character missing bytes."""
        tail = bytearray()
        for i in reversed(self._ids[max(self._read_offset, end - MAX_INCOMPLETE_BYTES) : end]):
            b = self.tokenizer.byte_value(i)
            if b is None:
                break
            tail.insert(0, b)
        for k in range(len(tail), 0, -1):  # at most one suffix starts with a lead byte
            if _is_incomplete_utf8(bytes(tail[-k:])):
                return k
        return 0

    def _emit(self, end: int) -> str:
        if end <= self._read_offset:
            return ""
        decode = self.tokenizer.decode
        prefix_text = decode(self._ids[: self._read_offset], self.skip_special_tokens)
        new_text = decode(self._ids[:end], self.skip_special_tokens)
        delta = new_text[len(prefix_text) :]
        # The next window starts where this delta's ids start: they are the next one's context.
        del self._ids[: self._read_offset]
        self._read_offset = end - self._read_offset
        return delta
