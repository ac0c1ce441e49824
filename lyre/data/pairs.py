"""Parallel data for an encoder-decoder: (source, target) text pairs, read, encoded and batched.

Where pairs come from (each entry of `data.corpus`):

    FILE.tsv     one pair per line: source<TAB>target
    FILE.jsonl   one JSON object per line: {"source": "...", "target": "..."}
    toy:NAME     a bundled deterministic toy task (lyre/data/toy.py), e.g. toy:dates or toy:sort:5000

Encoding: the source becomes its token ids + EOS; the decoder reads BOS + target and learns to
write target + EOS (teacher forcing). A batch pads every row to its longest with PAD; PAD keys
are masked out of attention and PAD targets (-100) out of the loss (lyre/model/seq2seq.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lyre.core.errors import LyreError
from lyre.core.io import read_json_object
from lyre.data.toy import parse_spec, toy_pairs
from lyre.run.rundir import RunDir

PAIR_SUFFIXES = (".tsv", ".jsonl")
PAIRS_KIND = "pairs"  # meta.json "kind" of a directory of prepared pairs (lyre.train.tasks.seq2seq)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    where: str = ""  # FILE:LINE (or toy:NAME #i), for error messages


def read_pairs(spec: str) -> list[Pair]:
    """The pairs of one `data.corpus` entry (a .tsv or .jsonl file, or toy:NAME[:COUNT])."""
    toy = parse_spec(spec)
    if toy is not None:
        return [Pair(s, t, f"{spec} #{i}") for i, (s, t) in enumerate(toy_pairs(*toy))]
    path = Path(spec)
    if path.suffix not in PAIR_SUFFIXES:
        raise LyreError(
            f"data.corpus {spec} is not a pairs file: an encoder-decoder learns from (source, "
            "target) pairs in a .tsv (source<TAB>target) or .jsonl ({\"source\", \"target\"}) "
            "file, or a toy task such as toy:dates; plain text trains a language model (gpt, lstm, ...)"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LyreError(f"pairs file {path} not found") from None
    except UnicodeDecodeError as e:
        raise LyreError(f"pairs file {path} is not UTF-8 text (byte {e.start})") from None
    parse = _tsv_pair if path.suffix == ".tsv" else _jsonl_pair
    pairs = [parse(line, f"{path}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    if not pairs:
        raise LyreError(f"pairs file {path} holds no pairs")
    return pairs


def _tsv_pair(line: str, where: str) -> Pair:
    fields = line.split("\t")
    if len(fields) != 2:
        raise LyreError(f"{where}: expected source<TAB>target (one tab), found {len(fields) - 1} tabs")
    return Pair(fields[0], fields[1], where)


def _jsonl_pair(line: str, where: str) -> Pair:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise LyreError(f"{where}: not valid JSON ({e.msg})") from None
    if not (isinstance(obj, dict) and isinstance(obj.get("source"), str)
            and isinstance(obj.get("target"), str)):
        raise LyreError(f'{where}: expected an object {{"source": "...", "target": "..."}}')
    return Pair(obj["source"], obj["target"], where)


def looks_like_pairs(spec: str) -> bool:
    """True if a corpus entry is pair data: a toy task, or a .tsv/.jsonl file whose first line
    reads as a pair. A language model refuses such data (it would learn the tabs and braces)."""
    if parse_spec(spec) is not None:
        return True
    path = Path(spec)
    if path.suffix not in PAIR_SUFFIXES or not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        (_tsv_pair if path.suffix == ".tsv" else _jsonl_pair)(first.rstrip("\n"), "")
        return True
    except (LyreError, UnicodeDecodeError, OSError):
        return False


def is_pairs_dir(data_dir: Path) -> bool:
    """True if data_dir holds pairs prepared by a seq2seq run (its meta.json says so)."""
    try:
        return read_json_object(data_dir / "meta.json").get("kind") == PAIRS_KIND
    except LyreError:
        return False


def load_pairs(path: Path) -> list[Pair]:
    """The pairs of a prepared train.jsonl or val.jsonl."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [Pair(r["source"], r["target"], r.get("where", "")) for r in rows]


def validation_pairs(run) -> tuple[list[Pair], str]:
    """A loaded run's own held-out pairs and a label for them (what `lyre eval RUN` scores)."""
    cfg = run.config.data
    data_dir = Path(cfg.data_dir) if cfg.data_dir else RunDir(run.run_dir).data_dir
    if not is_pairs_dir(data_dir):
        raise LyreError(f"{run.run_dir} has no prepared validation pairs in {data_dir}; "
                        "pass --data FILE.tsv or FILE.jsonl to score pairs")
    return load_pairs(data_dir / "val.jsonl"), f"the validation pairs ({data_dir / 'val.jsonl'})"


# ----------------------------------------------------------------------------------------------
# Ids and batches


@dataclass(frozen=True)
class Specials:
    """The ids the model reserves after the tokenizer's (lyre.model.seq2seq)."""

    pad: int
    bos: int
    eos: int

    @classmethod
    def of(cls, config) -> Specials:
        return cls(config.pad_id, config.bos_id, config.eos_id)


def encode_source(tokenizer, text: str, eos: int, block_size: int, where: str = "the source") -> list[int]:
    ids = tokenizer.encode(text) + [eos]
    if len(ids) > block_size:
        raise LyreError(f"{where} is {len(ids)} tokens with EOS, longer than model.block_size="
                        f"{block_size}; raise model.block_size or shorten it")
    return ids


def encode_pairs(pairs: list[Pair], tokenizer, specials: Specials, block_size: int
                 ) -> list[tuple[list[int], list[int]]]:
    """(source ids + EOS, target ids) of every pair; a pair longer than the context is an error."""
    out = []
    for pair in pairs:
        src = encode_source(tokenizer, pair.source, specials.eos, block_size, f"the source at {pair.where}")
        tgt = tokenizer.encode(pair.target)
        if len(tgt) + 1 > block_size:
            raise LyreError(f"the target at {pair.where} is {len(tgt) + 1} tokens with EOS, longer "
                            f"than model.block_size={block_size}; raise model.block_size or drop the pair")
        out.append((src, tgt))
    return out


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    longest = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (longest - len(r)) for r in rows], dtype=torch.long)


def collate(rows: list[tuple[list[int], list[int]]], specials: Specials
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(src [B, S], decoder input BOS + target [B, T], target + EOS [B, T] with -100 on padding)."""
    src = pad_rows([s for s, _ in rows], specials.pad)
    tgt_in = pad_rows([[specials.bos] + t for _, t in rows], specials.pad)
    tgt_out = pad_rows([t + [specials.eos] for _, t in rows], IGNORE_INDEX)
    return src, tgt_in, tgt_out
