"""The GPT-2 tokenizer, built offline from OpenAI's ``encoder.json`` and ``vocab.bpe``.

tiktoken normally downloads these files; lyre builds the same ``tiktoken.Encoding`` from
local copies instead, so it works without network access and a run directory can carry its
own tokenizer files.

The conversion is short. ``encoder.json`` maps each token, written with GPT-2's byte-to-
unicode alphabet, to its id; turning the alphabet back into bytes gives tiktoken's
``mergeable_ranks`` (token bytes -> id). tiktoken merges the pair whose *result* has the
lowest rank, which equals GPT-2's "apply merges in the order of vocab.bpe" only if every
merged token's id is 256 + its line in vocab.bpe. ``_check_merge_order`` verifies exactly that,
which is the only thing ``vocab.bpe`` is needed for.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import tiktoken

from lyre.core.errors import LyreError
from lyre.tokenizers.base import EOT, Tokenizer, write_meta
from lyre.tokenizers.bpe import UNICODE_TO_BYTE

ENCODER_FILE = "encoder.json"
MERGES_FILE = "vocab.bpe"
GPT2_EOT_ID = 50256

# tiktoken's pattern for GPT-2 (``r50k_pat_str`` in tiktoken_ext/openai_public.py). It is
# equivalent to the original release's
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# but uses possessive quantifiers, which run faster.
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


def load_gpt2_encoding(directory: str | Path) -> tiktoken.Encoding:
    """Build the GPT-2 ``tiktoken.Encoding`` from ``encoder.json`` + ``vocab.bpe``."""
    encoder = _read_encoder(Path(directory) / ENCODER_FILE)
    merges = _read_merges(Path(directory) / MERGES_FILE)
    _check_merge_order(encoder, merges, Path(directory))
    ranks = {_token_to_bytes(token): i for token, i in encoder.items() if token != EOT}
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_EOT_ID + 1,
    )


def _read_encoder(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise LyreError(
            f"{path} not found; the gpt2 tokenizer needs {ENCODER_FILE} and {MERGES_FILE} "
            f"from OpenAI's GPT-2 release in that directory"
        )
    try:
        encoder = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LyreError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(encoder, dict) or encoder.get(EOT) != GPT2_EOT_ID:
        raise LyreError(f"{path} is not GPT-2's encoder.json (no {EOT} with id {GPT2_EOT_ID})")
    return encoder


def _read_merges(path: Path) -> list[str]:
    if not path.is_file():
        raise LyreError(
            f"{path} not found; the gpt2 tokenizer needs {MERGES_FILE} next to {ENCODER_FILE}"
        )
    lines = path.read_text(encoding="utf-8").split("\n")
    return [line for line in lines[1:] if line]  # line 0 is "#version: 0.2"


def _check_merge_order(encoder: dict[str, int], merges: list[str], directory: Path) -> None:
    """Every merge must produce the token whose id is 256 + the merge's line number."""
    if len(encoder) != len(merges) + 256 + 1:
        raise LyreError(
            f"{directory}: {ENCODER_FILE} has {len(encoder)} tokens but {MERGES_FILE} has "
            f"{len(merges)} merges; expected 256 bytes + merges + {EOT}"
        )
    for n, line in enumerate(merges):
        left, right = line.split(" ")
        if encoder.get(left + right) != 256 + n:
            raise LyreError(
                f"{directory}: merge {n} ({line!r}) does not match token id {256 + n} in "
                f"{ENCODER_FILE}; are the two files from the same release?"
            )


def _token_to_bytes(token: str) -> bytes:
    return bytes(UNICODE_TO_BYTE[c] for c in token)


class GPT2Tokenizer(Tokenizer):
    """OpenAI's GPT-2 BPE (50257 tokens), running on tiktoken."""

    kind = "gpt2"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.enc = load_gpt2_encoding(self.directory)
        self.vocab_size = self.enc.n_vocab
        self.special_tokens = {EOT: GPT2_EOT_ID}

    def encode_ordinary(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        if allow_special:
            return self.enc.encode(text, allowed_special="all")
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], *, allow_special: bool = False) -> list[list[int]]:
        """Encode texts in tiktoken's thread pool."""
        if allow_special:
            return self.enc.encode_batch(list(texts), allowed_special="all")
        return self.enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self.enc.decode(self._check_ids(ids))

    def token_bytes(self, id: int) -> bytes:
        return self.enc.decode_single_token_bytes(self._check_id(id))

    def save(self, directory: str | Path) -> None:
        """Copy ``encoder.json`` and ``vocab.bpe`` so the directory is self-contained."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in (ENCODER_FILE, MERGES_FILE):
            if (directory / name).resolve() != (self.directory / name).resolve():
                shutil.copyfile(self.directory / name, directory / name)
        write_meta(directory, {"kind": self.kind, "vocab_size": self.vocab_size})
