"""The one interface every tokenizer implements.

A tokenizer turns text into a list of integer ids (0 .. vocab_size-1) and back. The model
only ever sees ids, so everything else in lyre (data preparation, sampling, bits-per-byte)
talks to this small interface and never to a concrete tokenizer.

Special tokens such as ``<|endoftext|>`` are *not* produced from plain text by default:
``encode(text)`` treats the characters "<|endoftext|>" in a document as ordinary text (the
"encode_ordinary" semantics of tiktoken), so a corpus cannot inject control tokens by
accident. Pass ``allow_special=True`` when you really mean them.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lyre.core.errors import LyreError

EOT = "<|endoftext|>"
META_FILE = "tokenizer.json"


class Tokenizer(ABC):
    """Text <-> ids. Subclasses set ``kind``, ``vocab_size`` and ``special_tokens``."""

    kind: str
    vocab_size: int
    special_tokens: dict[str, int]

    @property
    def eot_id(self) -> int | None:
        """Id of ``<|endoftext|>``, the document separator, or None if there is none."""
        return self.special_tokens.get(EOT)

    # ---- encoding -------------------------------------------------------------------------

    @abstractmethod
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with every character treated as text (no special tokens)."""

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Encode text; with ``allow_special`` the special token strings become their ids.

        The text is cut at special token strings and each piece is encoded on its own, the
        same thing tiktoken does, so a special token never merges with its neighbours.
        """
        if not (allow_special and self.special_tokens):
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, piece in enumerate(self._special_pattern().split(text)):
            if i % 2:  # odd pieces are the captured separators, i.e. special tokens
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def encode_batch(self, texts: Sequence[str], *, allow_special: bool = False) -> list[list[int]]:
        """Encode many texts. Subclasses override this when they can run it in parallel."""
        return [self.encode(text, allow_special=allow_special) for text in texts]

    def _special_pattern(self) -> re.Pattern[str]:
        # Longest first so that a special token that is a prefix of another never wins.
        names = sorted(self.special_tokens, key=len, reverse=True)
        return re.compile("(" + "|".join(map(re.escape, names)) + ")")

    # ---- decoding -------------------------------------------------------------------------

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to text. Byte-level tokenizers replace incomplete UTF-8 with U+FFFD."""

    @abstractmethod
    def token_bytes(self, id: int) -> bytes:
        """The raw bytes one token stands for (for streaming output and bits-per-byte)."""

    # ---- persistence ----------------------------------------------------------------------

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write a self-contained copy into ``directory`` (``tokenizer.json`` + files)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eot_id={self.eot_id})"

    # ---- helpers for subclasses -----------------------------------------------------------

    def _check_ids(self, ids: Sequence[int] | Any) -> list[int]:
        """Ids as a plain list of ints (accepts lists, numpy arrays and torch tensors)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise LyreError(
                f"token id {bad} is outside this {self.kind} tokenizer's vocabulary "
                f"(0..{self.vocab_size - 1}); was the model trained with another tokenizer?"
            )
        return ids

    def _check_id(self, id: int) -> int:
        if not 0 <= id < self.vocab_size:
            raise LyreError(
                f"token id {id} is outside this {self.kind} tokenizer's vocabulary "
                f"(0..{self.vocab_size - 1})"
            )
        return int(id)


def write_meta(directory: str | Path, meta: dict[str, Any]) -> Path:
    """Create ``directory`` and write ``tokenizer.json``; ``meta`` must hold ``kind``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    """Read ``tokenizer.json`` with a one-line LyreError for every way it can be wrong."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise LyreError(f"{path} not found; expected a directory written by Tokenizer.save()")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LyreError(f"{path} is not valid JSON ({e}); re-create the tokenizer") from e
    if not isinstance(meta, dict) or "kind" not in meta:
        raise LyreError(f'{path} has no "kind" field; re-create the tokenizer')
    return meta


def require_texts(texts: Iterable[str] | None, spec: str) -> Iterable[str]:
    """Learned tokenizers need a corpus; say so clearly instead of failing later."""
    if texts is None:
        raise LyreError(f"tokenizer '{spec}' is learned from a corpus, but no texts were given")
    if isinstance(texts, str):
        return [texts]  # one string is one text, not an iterable of characters
    return texts
