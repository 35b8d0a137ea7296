"""Tokenizers: text <-> token ids, with InternLM's special tokens split out of the text.

``SentencePieceTokenizer`` wraps InternLM's SentencePiece model (BPE, byte fallback,
add_dummy_prefix off). ``ByteTokenizer`` is the offline stand-in for the random tiny model when no
tokenizer file exists: UTF-8 bytes plus InternLM's special tokens at InternLM's ids, so chat
templates and stop ids are the same. ``load_tokenizer`` picks one from the config.
Streaming text out of generated ids is ``core.detokenizer.IncrementalDetokenizer``.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.model"

# InternLM (v1) chat tokens that are not SentencePiece control pieces but act as special tokens.
INTERNLM_EXTRA_SPECIAL_TOKENS = ("<eoh>", "<eoa>")


class Tokenizer(ABC):
    """The interface the engine, the chat templates and the detokenizer use.

    Special tokens (``special_tokens``) are recognised as strings inside the text given to
    ``encode`` and mapped to their ids; everything between them goes through the subword model.
    ``decode`` drops special ids by default and otherwise writes them as their strings, so
    ``decode(encode(text), skip_special_tokens=False) == text`` for any text the model can encode.
    """

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids (the model's embedding rows)."""

    @property
    @abstractmethod
    def bos_token_id(self) -> int:
        """Beginning-of-sequence id (``<s>``)."""

    @property
    @abstractmethod
    def eos_token_id(self) -> int:
        """End-of-sequence id (``</s>``)."""

    @property
    @abstractmethod
    def special_tokens(self) -> dict[str, int]:
        """Special token string -> id (at least ``<unk>``, ``<s>``, ``</s>``)."""

    @abstractmethod
    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary piece of one id (SentencePiece spelling: ``▁`` for a space, ``<0xE4>``)."""

    @abstractmethod
    def byte_value(self, token_id: int) -> int | None:
        """The byte a byte-fallback id stands for (``<0xE4>`` -> 0xE4), None for other ids."""

    @abstractmethod
    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        """Encode special-token-free texts, one id list per text."""

    @abstractmethod
    def _decode_plain(self, ids: list[int]) -> str:
        """Decode ids that contain no special ids."""

    def token_id(self, piece: str) -> int:
        """The id of one vocabulary piece; KeyError if the vocabulary has no such piece."""
        if piece in self.special_tokens:
            return self.special_tokens[piece]
        return self._piece_id(piece)

    @abstractmethod
    def _piece_id(self, piece: str) -> int:
        """The id of a non-special piece; KeyError if there is none."""

    def convert_ids_to_pieces(self, ids: Sequence[int]) -> list[str]:
        """``id_to_piece`` over a list of ids."""
        return [self.id_to_piece(i) for i in ids]

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """The ids of ``special_tokens``: what ``skip_special_tokens`` drops."""
        return frozenset(self.special_tokens.values())

    @cached_property
    def _special_pattern(self) -> re.Pattern[str]:
        # Longest first, so a special token that contains another is matched whole.
        names = sorted(self.special_tokens, key=len, reverse=True)
        return re.compile("(" + "|".join(re.escape(n) for n in names) + ")")

    @cached_property
    def _special_names(self) -> dict[int, str]:
        return {i: s for s, i in self.special_tokens.items()}

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of ``text``; special-token strings in it (``<s>``, ``<eoa>``, ...) become
        their ids, the text between them is encoded by the subword model."""
        parts = self._special_pattern.split(text)  # odd indices are the special tokens
        plain = [p for p in parts[0::2] if p]
        encoded = iter(self._encode_plain(plain))
        ids = [self.bos_token_id] if add_bos else []
        for k, part in enumerate(parts):
            if k % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(next(encoded))
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``. Special ids are dropped, or written as their strings when
        ``skip_special_tokens`` is False; bytes that are not valid UTF-8 become U+FFFD."""
        special = self.special_ids
        if skip_special_tokens:
            return self._decode_plain([i for i in ids if i not in special])
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in special:
                if run:
                    out.append(self._decode_plain(run))
                    run = []
                out.append(self._special_names[i])
            else:
                run.append(i)
        if run:
            out.append(self._decode_plain(run))
        return "".join(out)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece ``.model`` file (InternLM's: BPE, byte fallback, no dummy prefix).

    Special tokens: the model's ``<unk>``, ``<s>``, ``</s>`` plus InternLM's ``<eoh>`` and
    ``<eoa>`` where the vocabulary has them. Text between special tokens is encoded with plain
    ``SentencePieceProcessor.encode`` (no dummy prefix is added by InternLM's model).
    """

    def __init__(self, path: str | Path) -> None:
        import sentencepiece as spm

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"SentencePiece model {self.path} does not exist")
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except Exception as e:  # sentencepiece raises OSError/RuntimeError with a terse text
            if "null character" in str(e):  # InternLM's model has a "\0" byte piece (id 354)
                raise RuntimeError(
                    f"sentencepiece {spm.__version__} refuses {self.path}: {e}. sentencepiece "
                    "0.2.2 rejects byte pieces that 0.2.0, 0.2.1 and 0.2.3 load; install another "
                    "version: pip install 'sentencepiece>=0.2.3'"
                ) from e
            raise ValueError(
                f"{self.path} is not a SentencePiece model ({e}); point model.tokenizer= at the "
                f"{TOKENIZER_FILE} of the checkpoint"
            ) from e
        sp = self._sp
        self._vocab_size = sp.get_piece_size()
        specials: dict[str, int] = {}
        for i in (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()):
            if i >= 0:
                specials[sp.id_to_piece(i)] = i
        for name in INTERNLM_EXTRA_SPECIAL_TOKENS:
            i = sp.piece_to_id(name)
            if i != sp.unk_id():
                specials[name] = i
        self._special_tokens = specials
        self._bytes: dict[int, int] = {}
        for b in range(256):
            i = sp.piece_to_id(f"<0x{b:02X}>")
            if sp.is_byte(i):
                self._bytes[i] = b

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_token_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_token_id(self) -> int:
        return self._sp.eos_id()

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    def id_to_piece(self, token_id: int) -> str:
        self._check_id(token_id)
        return self._sp.id_to_piece(token_id)

    def byte_value(self, token_id: int) -> int | None:
        return self._bytes.get(token_id)

    def _piece_id(self, piece: str) -> int:
        i = self._sp.piece_to_id(piece)
        if i == self._sp.unk_id():  # piece_to_id answers unknown pieces with <unk>
            raise KeyError(f"{piece!r} is not a piece of {self.path}")
        return i

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts) if texts else []

    def _decode_plain(self, ids: list[int]) -> str:
        for i in ids:
            self._check_id(i)
        return self._sp.decode(ids)

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self._vocab_size:
            raise ValueError(
                f"token id {token_id} is outside the vocabulary [0, {self._vocab_size})"
            )


class ByteTokenizer(Tokenizer):
    """Offline UTF-8 byte tokenizer for the random tiny model (no tokenizer file needed).

    Ids: 0 ``<unk>``, 1 ``<s>``, 2 ``</s>``, 3..258 the bytes 0x00..0xFF (pieces ``<0x00>``...),
    InternLM's ``<eoh>`` 103027 and ``<eoa>`` 103028; vocabulary 103168 like InternLM's, so the
    chat template and the stop ids carry over. ``encode`` only produces those ids. The other ids
    (which a random model samples too) decode to one printable ASCII character each
    (``chr(32 + id % 95)``) so that a random model's output is visible text; they are stand-ins,
    not a vocabulary.
    """

    BYTE_OFFSET = 3
    VOCAB_SIZE = 103168
    SPECIAL_TOKENS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<eoh>": 103027, "<eoa>": 103028}

    @property
    def vocab_size(self) -> int:
        return self.VOCAB_SIZE

    @property
    def bos_token_id(self) -> int:
        return 1

    @property
    def eos_token_id(self) -> int:
        return 2

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self.SPECIAL_TOKENS)

    def id_to_piece(self, token_id: int) -> str:
        if token_id in self._special_names:
            return self._special_names[token_id]
        b = self.byte_value(token_id)
        return f"<0x{b:02X}>" if b is not None else self._stand_in(token_id)

    def byte_value(self, token_id: int) -> int | None:
        b = token_id - self.BYTE_OFFSET
        return b if 0 <= b < 256 else None

    def _piece_id(self, piece: str) -> int:
        m = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
        if m is None:
            raise KeyError(
                f"{piece!r} is not a piece of the byte tokenizer (pieces: <0x00>..<0xFF>)"
            )
        return self.BYTE_OFFSET + int(m.group(1), 16)

    def _encode_plain(self, texts: list[str]) -> list[list[int]]:
        return [[self.BYTE_OFFSET + b for b in t.encode("utf-8")] for t in texts]

    def _decode_plain(self, ids: list[int]) -> str:
        out: list[str] = []
        run = bytearray()
        for i in ids:
            b = self.byte_value(i)
            if b is not None:
                run.append(b)
                continue
            if run:
                out.append(run.decode("utf-8", errors="replace"))
                run.clear()
            out.append(self._stand_in(i))
        if run:
            out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def _stand_in(self, token_id: int) -> str:
        if not 0 <= token_id < self.VOCAB_SIZE:
            raise ValueError(
                f"token id {token_id} is outside the vocabulary [0, {self.VOCAB_SIZE})"
            )
        return chr(32 + token_id % 95)


def load_tokenizer(path_or_none: str | None, model_dir: str | None) -> Tokenizer:
    """The tokenizer for ``model.tokenizer`` (``path_or_none``) and ``model.path`` (``model_dir``).

    A ``.model`` file, or a folder holding ``tokenizer.model``, gives a SentencePieceTokenizer.
    With no path, ``<model_dir>/tokenizer.model`` is used when it exists, else the offline
    ByteTokenizer (meant for the random tiny model). A path that does not exist raises
    FileNotFoundError naming it and the fix.
    """
    if path_or_none is not None:
        path = Path(path_or_none).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"tokenizer {path} does not exist; set model.tokenizer= to a SentencePiece "
                f"{TOKENIZER_FILE} file (or a folder holding one), or leave it unset to use "
                f"<model.path>/{TOKENIZER_FILE}"
            )
        if path.is_dir():
            if not (path / TOKENIZER_FILE).is_file():
                raise FileNotFoundError(
                    f"tokenizer folder {path} holds no {TOKENIZER_FILE}; set model.tokenizer= to "
                    "the SentencePiece model file itself"
                )
            path = path / TOKENIZER_FILE
        return SentencePieceTokenizer(path)
    if model_dir is not None:
        candidate = Path(model_dir).expanduser() / TOKENIZER_FILE
        if candidate.is_file():
            return SentencePieceTokenizer(candidate)
        logger.warning(
            "%s not found: using the offline byte tokenizer, which only suits random weights; "
            "set model.tokenizer= to the checkpoint's %s",
            candidate,
            TOKENIZER_FILE,
        )
    return ByteTokenizer()
