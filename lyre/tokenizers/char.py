"""Character-level tokenizer: one id per distinct character of the training corpus.

This is the tokenizer of "Let's build GPT": the vocabulary is the sorted set of characters
seen in the corpus, so id order is code point order and the vocabulary file is readable.

Encoding is vectorised with numpy: the text becomes an array of code points (via UTF-32) and
a lookup table indexed by code point turns it into ids in one step. That is about 20x faster
than a Python loop over characters and makes a typo-level error report cheap: the first
unknown character is found with ``np.flatnonzero``.

Unknown characters. By default a character that was not in the training corpus is an error
(LyreError naming the character, its code point and its position in the text given to
``encode``), because silently dropping or replacing text hides data problems. To replace unknown
characters instead:

- per call: ``encode(text, unknown="replace")``;
- for this tokenizer object: ``replace_unknown()`` (what ``--replace-unknown`` of ``lyre chat``,
  ``lyre sample`` and ``lyre serve`` does);
- recorded with a run: ``"unk": "?"`` in ``RUN_DIR/tokenizer/tokenizer.json`` (any character of
  the vocabulary), so every command that loads the run replaces;
- at build time: ``unk="?"`` (any single character; added to the vocabulary if the corpus
  lacks it, so only before training).

The replacement is ``unk`` when set, else ``?``, else a space, else the first character of the
vocabulary: always a character the model knows, so a trained model's vocabulary never changes.
Decoding gives the replacement back, so the round trip is lossy only for characters the
tokenizer never saw.

``<|endoftext|>``. Like every lyre tokenizer, a char tokenizer reserves one id for the end of a
text: the last one (``len(chars)``), so the characters keep their code point order. Fine-tuning
ends each answer with it and generation stops there. As in bpe.py, the literal text
"<|endoftext|>" in a document is ordinary characters; only ``encode(..., allow_special=True)``
turns it into the reserved id. Tokenizers saved before this id existed (no ``special_tokens`` in
their tokenizer.json) load without it, so their runs keep working as they were trained.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lyre.core.errors import LyreError
from lyre.tokenizers.base import EOT, Tokenizer, require_texts, write_meta


class CharTokenizer(Tokenizer):
    """A vocabulary of single characters, ids in code point order, then ``<|endoftext|>``."""

    kind = "char"

    def __init__(self, chars: Iterable[str], unk: str | None = None, eot: bool = True) -> None:
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
        # <|endoftext|> takes the id after the last character (eot=False: a pre-EOT tokenizer).
        self.special_tokens = {EOT: len(self.chars)} if eot else {}
        self.vocab_size = len(self.chars) + len(self.special_tokens)
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

    @property
    def replacement(self) -> str:
        """The character an unknown one becomes: ``unk``, else ``?``, else a space, else the
        vocabulary's first character (always one the model knows)."""
        if self.unk is not None:
            return self.unk
        return next((c for c in ("?", " ") if c in self._stoi), self.chars[0])

    def replace_unknown(self, char: str | None = None) -> CharTokenizer:
        """From now on replace unknown characters with ``char`` (default: ``replacement``).

        ``char`` must already be in the vocabulary: a trained model has no id for a new one.
        """
        char = self.replacement if char is None else char
        if char not in self._stoi:
            raise LyreError(f"the replacement {char!r} is not in this char tokenizer's vocabulary; "
                            f"pick one of its characters, e.g. {self.replacement!r}")
        self.unk, self._unk_id = char, self._stoi[char]
        return self

    def encode(self, text: str, *, allow_special: bool = False,
               unknown: str | None = None) -> list[int]:
        """Text to ids. ``unknown``: "error" or "replace" for characters outside the vocabulary;
        None follows this tokenizer (replace when it has an ``unk``). ``allow_special``: the
        text "<|endoftext|>" becomes its reserved id (else it is ordinary characters)."""
        if unknown not in (None, "error", "replace"):
            raise LyreError(f"unknown= must be 'error' or 'replace'; got {unknown!r}")
        mode = unknown or ("error" if self._unk_id is None else "replace")
        if not (allow_special and self.special_tokens):
            return self._encode(text, mode)
        ids: list[int] = []
        for i, piece in enumerate(self._special_pattern().split(text)):
            if i % 2:  # odd pieces are the captured separators, i.e. special tokens
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self._encode(piece, mode))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode(text)

    def _encode(self, text: str, unknown: str) -> list[int]:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = self._lut[np.minimum(codes, len(self._lut) - 1)]
        missing = ids < 0
        if missing.any():
            if unknown == "error":
                self._raise_unknown(text, int(np.flatnonzero(missing)[0]))
            ids[missing] = self._stoi[self.replacement]
        return ids.tolist()

    def count_unknown(self, text: str) -> int:
        """How many characters of ``text`` are outside the vocabulary (for a notice)."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return int((self._lut[np.minimum(codes, len(self._lut) - 1)] < 0).sum())

    def _raise_unknown(self, text: str, pos: int) -> None:
        c = text[pos]
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1  # 1-based, as editors count
        near = text[max(0, pos - 12) : pos + 12]
        raise LyreError(
            f"character {c!r} (U+{ord(c):04X}) at position {pos} (line {line}, column {column}, "
            f"near {near!r}) is "
            f"not in this char-level model's vocabulary of {len(self.chars)} characters; to replace "
            f"unknown characters with {self.replacement!r} pass --replace-unknown (lyre agent, chat, "
            f"sample, serve, translate) or record it with the run: \"unk\": {json.dumps(self.replacement)} in "
            f"RUN_DIR/tokenizer/tokenizer.json"
        )

    def decode(self, ids: Sequence[int]) -> str:
        ids = np.asarray(self._check_ids(ids), dtype=np.int64)
        eot = self.eot_id
        if eot is None or not (ids == eot).any():
            return self._decode_chars(ids)
        # Cut before every <|endoftext|>: each later part starts with one, written as its text.
        first, *rest = np.split(ids, np.flatnonzero(ids == eot))
        return self._decode_chars(first) + "".join(EOT + self._decode_chars(p[1:]) for p in rest)

    def _decode_chars(self, ids: np.ndarray) -> str:
        return self._codes[ids].tobytes().decode("utf-32-le", "surrogatepass")

    def token_bytes(self, id: int) -> bytes:
        id = self._check_id(id)
        if id == self.eot_id:
            return EOT.encode("utf-8")  # special tokens stand for their text, as in bpe.py
        return self.chars[id].encode("utf-8", "surrogatepass")

    def save(self, directory: str | Path) -> None:
        write_meta(
            directory,
            {
                "kind": self.kind,
                "vocab_size": self.vocab_size,
                "unk": self.unk,
                "chars": self.chars,
                "special_tokens": self.special_tokens,
            },
        )

    @classmethod
    def load(cls, meta: dict) -> CharTokenizer:
        """Rebuild from the parsed ``tokenizer.json`` written by ``save``."""
        unk = meta.get("unk")
        if unk is not None and isinstance(meta.get("chars"), list) and unk not in meta["chars"]:
            raise LyreError(f"char tokenizer.json: unk {unk!r} is not one of its 'chars'; the "
                            "replacement must be a character the model knows (e.g. \"?\" or \" \")")
        # Saved before char tokenizers reserved <|endoftext|>: no "special_tokens", no EOT id.
        special = meta.get("special_tokens", {})
        if not isinstance(special, dict):
            raise LyreError(f"char tokenizer.json 'special_tokens' must be an object; got {special!r}")
        try:
            tok = cls(meta["chars"], unk=unk, eot=EOT in special)
        except (KeyError, TypeError) as e:
            raise LyreError(f"char tokenizer.json is missing a valid 'chars' list ({e})") from e
        if tok.chars != meta["chars"]:
            raise LyreError("char tokenizer.json 'chars' is not a sorted list of unique characters")
        if special != tok.special_tokens:
            raise LyreError(f"char tokenizer.json 'special_tokens' must be {{}} or "
                            f"{json.dumps(tok.special_tokens)} (the id after the last character); "
                            f"got {json.dumps(special)}")
        return tok

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, unk={self.unk!r}, eot_id={self.eot_id})"


def replace_unknown_in(tokenizer: Tokenizer, texts: Iterable[str]) -> str | None:
    """Data a char-level model is fine-tuned on: if ``texts`` hold characters outside its
    vocabulary, replace them from now on (``unk``, to be saved with the new run so that chat and
    serve replace them alike) and return a note saying which; None if there is nothing to do.

    A pretraining corpus rarely has every character later data uses (the Iliad has no digits and
    no '#', which the alpaca template needs); refusing would make such a model unusable.
    """
    if not isinstance(tokenizer, CharTokenizer) or tokenizer.unk is not None:
        return None
    counts: Counter[str] = Counter()
    for text in texts:
        if tokenizer.count_unknown(text):
            counts.update(c for c in text if c not in tokenizer._stoi)
    if not counts:
        return None
    tokenizer.replace_unknown()
    shown = ", ".join(f"{c!r} x {n:,}" for c, n in counts.most_common(8))
    more = f" and {len(counts) - 8} more" if len(counts) > 8 else ""
    return (f"the base's char vocabulary ({len(tokenizer.chars)} characters) lacks {len(counts)} "
            f"character(s) of the data ({shown}{more}): they become {tokenizer.unk!r} in training, "
            f"chat and serve (recorded as \"unk\" in the run's tokenizer/tokenizer.json)")


def replace_unknown(tokenizer: Tokenizer, char: str | None = None) -> Tokenizer:
    """``--replace-unknown``: make a char tokenizer replace characters outside its vocabulary.

    Byte-level tokenizers (bpe, gpt2) encode every text, so for them this changes nothing.
    """
    if isinstance(tokenizer, CharTokenizer):
        tokenizer.replace_unknown(char)
    return tokenizer
