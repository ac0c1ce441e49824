"""Tokenizers: one interface (``Tokenizer``), three implementations, two entry points::

build_tokenizer("char", texts)          # one id per character of the corpus
build_tokenizer("bpe:8192", texts)      # byte-level BPE learned from the corpus
build_tokenizer("bpe:8192:digits", texts)  # the same, one token per digit
build_tokenizer("gpt2:DIR")             # OpenAI's GPT-2 BPE from DIR/encoder.json + vocab.bpe
load_tokenizer(directory)               # anything written by Tokenizer.save()
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lyre.core.errors import LyreError
from lyre.tokenizers.base import EOT, Tokenizer, read_meta, require_texts
from lyre.tokenizers.bpe import BPETokenizer
from lyre.tokenizers.char import CharTokenizer
from lyre.tokenizers.gpt2 import GPT2Tokenizer

__all__ = [
    "EOT",
    "BPETokenizer",
    "CharTokenizer",
    "GPT2Tokenizer",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
]

SPEC_HELP = "use 'char', 'bpe:VOCAB_SIZE' (e.g. bpe:8192; bpe:8192:digits for one token per digit), 'gpt2:DIR' or a saved tokenizer directory (RUN_DIR/tokenizer)"


def build_tokenizer(spec: str, texts: Iterable[str] | None = None) -> Tokenizer:
    """Make a tokenizer from a spec string; ``char`` and ``bpe`` learn from ``texts``.

    ``texts`` is an iterable of strings (whole documents or chunks of a streamed corpus) and
    is read once.
    """
    if Path(spec).is_dir():
        # A tokenizer saved by another run (e.g. RUN_DIR/tokenizer): reuse it as it is, which is
        # what fine-tuning a trained or imported model needs.
        return load_tokenizer(spec)
    kind, _, arg = spec.partition(":")
    if kind == "char" and not arg:
        return CharTokenizer.from_texts(require_texts(texts, spec))
    if kind == "bpe":
        size, _, option = arg.partition(":")
        if not size.isdigit():
            raise LyreError(f"bad tokenizer spec {spec!r}: bpe needs a vocab size; {SPEC_HELP}")
        if option not in ("", "digits"):
            raise LyreError(f"bad tokenizer spec {spec!r}: the only bpe option is ':digits'; {SPEC_HELP}")
        return BPETokenizer.train(require_texts(texts, spec), int(size), digits=option == "digits")
    if kind == "gpt2":
        if not arg:
            raise LyreError(
                f"bad tokenizer spec {spec!r}: gpt2 needs the directory holding encoder.json "
                f"and vocab.bpe, e.g. gpt2:data/gpt2"
            )
        return GPT2Tokenizer(Path(arg).expanduser())
    raise LyreError(f"unknown tokenizer spec {spec!r}; {SPEC_HELP}")


def load_tokenizer(path_or_spec: str | Path) -> Tokenizer:
    """Load a tokenizer saved with ``Tokenizer.save()``, or build one from ``gpt2:DIR``."""
    if isinstance(path_or_spec, str) and path_or_spec.startswith("gpt2:"):
        return build_tokenizer(path_or_spec)
    directory = Path(path_or_spec)
    if directory.is_file() and directory.name == "tokenizer.json":
        directory = directory.parent
    if not directory.is_dir():
        raise LyreError(
            f"tokenizer directory {directory} not found; pass a directory written by "
            f"Tokenizer.save() or 'gpt2:DIR'"
        )
    meta = read_meta(directory)
    kind = meta["kind"]
    if kind == "char":
        return CharTokenizer.load(meta)
    if kind == "bpe":
        return BPETokenizer.load(directory, meta)
    if kind == "gpt2":
        return GPT2Tokenizer(directory)
    raise LyreError(
        f"{directory}/tokenizer.json has unknown kind {kind!r}; expected char, bpe or gpt2"
    )
