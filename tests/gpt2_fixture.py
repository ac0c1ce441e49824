"""A stand-in for OpenAI's GPT-2 tokenizer files, made by the test: encoder.json + vocab.bpe.

lyre's gpt2 tokenizer (and Hugging Face import/export of it) needs GPT-2's *format*: 256 byte
tokens, then one token per merge line with id 256 + line, then <|endoftext|> = 50256, 50257
tokens in all. The real files live in ../shared/data/gpt2, which a fresh clone does not have;
this module writes files of the same format and size so the gpt2 code paths are tested anyway:

  * ids 0..255: the 256 bytes, in GPT-2's order, spelled in GPT-2's byte-to-unicode alphabet;
  * real merges learned from the bundled Iliad with Hugging Face `tokenizers` (byte-level BPE,
    GPT-2's pre-tokenizer), so ordinary text is merged the way GPT-2's own merges do it;
  * filler merges up to 50,000 lines, built only from bytes that never occur in UTF-8 text
    (0xC0, 0xC1, 0xF5..0xFF): they make the vocabulary full-sized without touching the way
    any real text is tokenized, so tiktoken's and Hugging Face's BPE must still agree exactly.

Only the real files can check GPT-2's actual ids ("Hello world" -> [15496, 995]).
"""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

EOT = "<|endoftext|>"
N_MERGES = 50_257 - 256 - 1  # GPT-2: 50,257 tokens = 256 bytes + 50,000 merges + <|endoftext|>
NEVER_IN_UTF8 = [0xC0, 0xC1, *range(0xF5, 0x100)]

TEXT_CHARS = 200_000  # of the bundled Iliad, to learn the real merges from


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's alphabet: every byte as a printable character (from OpenAI's encoder.py)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _learned_merges(n: int) -> list[tuple[str, str]]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + n, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    from lyre.run.config import BUNDLED_ILIAD

    tok.train_from_iterator([BUNDLED_ILIAD.read_text(encoding="utf-8")[:TEXT_CHARS]], trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]


def _filler_merges(alphabet: dict[int, str], taken: set[str], n: int) -> list[tuple[str, str]]:
    """n merges of ever longer runs of bytes no UTF-8 text contains: ab, then abc, abcd, ..."""
    letters = [alphabet[b] for b in NEVER_IN_UTF8]
    merges: list[tuple[str, str]] = []
    level = letters
    while len(merges) < n:
        longer = []
        for left, right in product(level, letters):
            if left + right not in taken:
                merges.append((left, right))
                taken.add(left + right)
                longer.append(left + right)
                if len(merges) == n:
                    return merges
        level = longer
    return merges


def write_gpt2_files(directory: Path, learned: int = 2000) -> Path:
    """Write encoder.json and vocab.bpe in GPT-2's format into `directory`; returns it."""
    alphabet = bytes_to_unicode()
    # tiktoken's (and GPT-2's) byte order: printable bytes first, then the rest.
    order = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    order += [b for b in range(256) if b not in order]
    encoder = {alphabet[b]: i for i, b in enumerate(order)}
    merges = _learned_merges(learned)
    merges += _filler_merges(alphabet, {a + b for a, b in merges} | set(encoder), N_MERGES - len(merges))
    for left, right in merges:
        encoder[left + right] = len(encoder)
    encoder[EOT] = len(encoder)
    assert len(encoder) == 50_257 and encoder[EOT] == 50_256
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "encoder.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (directory / "vocab.bpe").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def gpt2_files(base: Path) -> Path:
    """The fixture directory under `base` (a session's temporary root), written on first use."""
    directory = base / "gpt2-format-fixture"
    if not (directory / "vocab.bpe").is_file():
        write_gpt2_files(directory)
    return directory
