"""Byte-level BPE trained on your own corpus, with Hugging Face ``tokenizers``.

Byte-level means the text is first turned into UTF-8 bytes and every byte is one of the 256
base tokens, so *any* string round trips exactly: emoji, CJK, combining accents, text the
tokenizer never saw. BPE then learns merges of frequent neighbours up to the vocabulary size.
This is the GPT-2 recipe (same pre-tokenizer regex, same byte-to-unicode trick); only the
merges are learned from your data instead of WebText.

Choices that keep the round trip lossless: no normalizer, ``add_prefix_space=False`` (GPT-2
style would otherwise insert a space before the text), the ByteLevel decoder, and
``initial_alphabet=ByteLevel.alphabet()`` so all 256 bytes are in the vocabulary even if the
corpus never used them. ``<|endoftext|>`` is added as a special token and gets id 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from lyre.core.errors import LyreError
from lyre.tokenizers.base import EOT, Tokenizer, require_texts, write_meta

BPE_FILE = "bpe.json"
MIN_VOCAB_SIZE = 256 + 1  # every byte plus <|endoftext|>


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    BPE libraries work on strings, and raw bytes such as 0x20 (space) or 0x0A (newline) are
    awkward to show in a vocabulary file. So printable bytes map to themselves and the others
    are shifted to code points 256 and up: byte 0x20 is stored as 'Ġ', 0x0A as 'Ċ'.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    shifted = [b for b in range(256) if b not in keep]
    mapping = {b: chr(b) for b in keep}
    mapping.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return mapping


UNICODE_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}

# Where a long text can be cut without changing its tokens: right after a newline that sits
# between two non-space characters. The GPT-2 pre-tokenizer regex always ends a piece there
# (the newline is a piece of its own), so encoding the halves separately gives the same ids.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
CHUNK_CHARS = 1 << 16


def split_for_parallel(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into ~``size``-character pieces at token-preserving boundaries."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = _SAFE_CUT.search(text, start + size)
        if cut is None:
            break
        pieces.append(text[start : cut.start()])
        start = cut.start()
    pieces.append(text[start:])
    return pieces


class BPETokenizer(Tokenizer):
    """A thin wrapper around a trained ``tokenizers.Tokenizer`` (BPE model, byte level)."""

    kind = "bpe"

    def __init__(self, hf: HFTokenizer) -> None:
        self.hf = hf
        # Treat "<|endoftext|>" in text as plain text; lyre's encode() handles allow_special.
        self.hf.encode_special_tokens = True
        self.vocab_size = hf.get_vocab_size()
        eot = hf.token_to_id(EOT)
        self.special_tokens = {} if eot is None else {EOT: eot}
        self._token_bytes: list[bytes] | None = None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, digits: bool = False) -> BPETokenizer:
        """Learn ``vocab_size`` tokens (bytes + merges + ``<|endoftext|>``) from texts.

        ``texts`` may be any iterable of strings, e.g. a generator over chunks of a big file.
        A small corpus may run out of pairs to merge; the vocabulary is then smaller.
        ``digits=True`` keeps every digit a token of its own (as Llama's tokenizer does): GPT-2's
        regex lets BPE merge runs of digits, so "48213" and the "48,213" it was copied from
        would share no tokens; one digit per token makes copying and arithmetic digit by digit.
        """
        if vocab_size < MIN_VOCAB_SIZE:
            raise LyreError(
                f"bpe vocab size {vocab_size} is too small; it must be at least "
                f"{MIN_VOCAB_SIZE} (256 bytes + <|endoftext|>)"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        if digits:
            hf.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), hf.pre_tokenizer])
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(require_texts(texts, f"bpe:{vocab_size}"), trainer=trainer)
        return cls(hf)

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str], *, allow_special: bool = False) -> list[list[int]]:
        """Encode texts on all cores: long texts are cut at safe points and batched."""
        if allow_special:
            return super().encode_batch(texts, allow_special=True)
        pieces = [split_for_parallel(text) for text in texts]
        flat = [p for ps in pieces for p in ps]
        encoded = iter(self.hf.encode_batch(flat, add_special_tokens=False))
        out = []
        for ps in pieces:
            ids: list[int] = []
            for _ in ps:
                ids.extend(next(encoded).ids)
            out.append(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(self._check_ids(ids), skip_special_tokens=False)

    def token_bytes(self, id: int) -> bytes:
        if self._token_bytes is None:
            self._token_bytes = [self._bytes_of(i) for i in range(self.vocab_size)]
        return self._token_bytes[self._check_id(id)]

    def _bytes_of(self, id: int) -> bytes:
        token = self.hf.id_to_token(id)
        if token in self.special_tokens:
            return token.encode("utf-8")  # special tokens are stored as plain text
        return bytes(UNICODE_TO_BYTE[c] for c in token)

    def save(self, directory: str | Path) -> None:
        directory = write_meta(
            directory, {"kind": self.kind, "vocab_size": self.vocab_size, "file": BPE_FILE}
        )
        self.hf.save(str(directory / BPE_FILE))

    @classmethod
    def load(cls, directory: str | Path, meta: dict) -> BPETokenizer:
        path = Path(directory) / meta.get("file", BPE_FILE)
        if not path.is_file():
            raise LyreError(f"{path} not found; the saved bpe tokenizer is incomplete")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise LyreError(f"{path} is not a valid tokenizers JSON file ({e})") from e
        return cls(hf)
