"""Sequence to sequence: learn to map each source text to its target (an encoder-decoder).

The pairs come from `data.corpus` (.tsv / .jsonl files, or toy:NAME tasks; lyre/data/pairs.py) and
are prepared once into RUN_DIR/data: train.jsonl and val.jsonl (the last `data.val_fraction` of
each source's pairs, at least one), the tokenizer learned from all their texts, and meta.json.
A resumed run reads them back, so it trains on exactly the same pairs.

A batch is `rows` pairs drawn at random (with replacement) by one seeded generator, padded to
their longest: (source, BOS + target, target + EOS). Evaluation reports the teacher-forced loss
of the val (and a slice of the train) targets and the exact-match accuracy of greedy decoding on
the val pairs: periodically on the first 8 x train.eval_windows of them, at the end on all.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lyre.core.errors import LyreError
from lyre.core.io import atomic_write_text, write_json
from lyre.data.pairs import (
    PAIRS_KIND,
    Pair,
    Specials,
    collate,
    encode_pairs,
    is_pairs_dir,
    load_pairs,
    read_pairs,
)
from lyre.data.shards import is_prepared
from lyre.model.seq2seq import N_SPECIAL
from lyre.run.config import RunConfig
from lyre.run.rundir import RunDir
from lyre.tokenizers import build_tokenizer, load_tokenizer
from lyre.train.tasks.random_draws import RandomDrawTask
from lyre.zoo.translate import greedy_decode, pair_loss


class Seq2SeqTask(RandomDrawTask):
    name = "seq2seq"

    def setup(self, config: RunConfig, run: RunDir, *, resume: bool, dist: Any) -> None:
        self.config = config
        self.seed_draws(config.train.seed)
        data_dir = dist.main_first(lambda: pairs_dir_for(config, run, resume))
        self.tokenizer = load_tokenizer(data_dir / "tokenizer")
        self.train_pairs = load_pairs(data_dir / "train.jsonl")
        self.val_pairs = load_pairs(data_dir / "val.jsonl")
        if not config.train.init_from:
            config.model.vocab_size = self.tokenizer.vocab_size + N_SPECIAL
        config.model.validate()
        self.specials = Specials.of(config.model)
        block = config.model.block_size
        self.train_ids = encode_pairs(self.train_pairs, self.tokenizer, self.specials, block)
        self.val_ids = encode_pairs(self.val_pairs, self.tokenizer, self.specials, block)
        if dist.is_main:
            run.take_tokenizer(data_dir / "tokenizer", resume)

    def build_model(self, config: RunConfig) -> nn.Module:
        from lyre.train.tasks.lm import init_model  # random init, or train.init_from's weights

        return init_model(config, self.tokenizer.vocab_size + N_SPECIAL)

    def draw(self, rows: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        picks = torch.randint(len(self.train_ids), (rows,), generator=self.batches).tolist()
        return tuple(t.to(device) for t in collate([self.train_ids[i] for i in picks], self.specials))

    def loss(self, forward: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        src, tgt_in, tgt_out = batch
        return forward(src, tgt_in, tgt_out)[1]

    def evaluate(self, model: nn.Module, exact: bool) -> dict[str, Any]:
        windows = self.config.train.eval_windows
        n = None if exact or windows <= 0 else 8 * windows
        val, train = self.val_ids[:n], self.train_ids[: n or 8 * 64]
        was_training = model.training
        model.eval()
        try:
            with self.autocast:
                val_sum, val_count = pair_loss(model, val)
                train_sum, train_count = pair_loss(model, train)
                outputs = greedy_decode(model, [s for s, _ in val])
        finally:
            model.train(was_training)
        targets = [p.target for p in self.val_pairs[: len(val)]]
        correct = sum(self.tokenizer.decode(o) == t for o, t in zip(outputs, targets, strict=True))
        val_loss = val_sum / val_count
        return {
            "train_loss": train_sum / train_count,
            "val_loss": val_loss,
            "val_perplexity": math.exp(min(val_loss, 50.0)),
            "val_exact_match": correct / len(val),
            "val_pairs": len(val),
            "val_exact": n is None,
        }


# ----------------------------------------------------------------------------------------------
# The prepared pairs


def pairs_dir_for(config: RunConfig, run: RunDir, resume: bool) -> Path:
    """RUN_DIR/data prepared from data.corpus (kept as it is on resume), or data.data_dir if it
    holds prepared pairs (another run's data directory)."""
    if config.data.data_dir:
        data_dir = Path(config.data.data_dir)
        if not is_pairs_dir(data_dir):
            what = ("holds language-model tokens (lyre prepare)" if is_prepared(data_dir)
                    else "holds no prepared pairs")
            raise LyreError(f"data.data_dir {data_dir} {what}; an encoder-decoder learns from "
                            "(source, target) pairs: set data.corpus to .tsv/.jsonl files or toy:dates")
        return data_dir
    if resume and is_pairs_dir(run.data_dir):
        return run.data_dir
    prepare_pairs(config.data.corpus, config.data.tokenizer, run.data_dir, config.data.val_fraction)
    return run.data_dir


def split_pairs(pairs: list[Pair], val_fraction: float) -> tuple[list[Pair], list[Pair]]:
    """The last val_fraction of the pairs (at least one) for validation, the rest for training."""
    if len(pairs) < 2:
        raise LyreError(f"{pairs[0].where.rpartition(':')[0] or 'the data'} has {len(pairs)} pair; "
                        "need at least 2 (training and validation)")
    n_val = min(len(pairs) - 1, max(1, round(len(pairs) * val_fraction)))
    return pairs[: len(pairs) - n_val], pairs[len(pairs) - n_val :]


def prepare_pairs(corpus: list[str], tokenizer_spec: str, out_dir: Path, val_fraction: float) -> dict:
    """Read, split and store the pairs and their tokenizer in out_dir (replaced if present)."""
    if not 0.0 < val_fraction < 1.0:
        raise LyreError(f"data.val_fraction must be in (0, 1); got {val_fraction}")
    if not corpus:
        raise LyreError("data.corpus is empty; give .tsv/.jsonl pair files or a toy task (toy:dates)")
    train, val = [], []
    for spec in corpus:
        t, v = split_pairs(read_pairs(spec), val_fraction)
        train += t
        val += v
    tokenizer = build_tokenizer(tokenizer_spec, (text for p in train + val for text in (p.source, p.target)))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    tokenizer.save(out_dir / "tokenizer")
    for name, pairs in (("train", train), ("val", val)):
        lines = (json.dumps({"source": p.source, "target": p.target, "where": p.where}) for p in pairs)
        atomic_write_text(out_dir / f"{name}.jsonl", "\n".join(lines) + "\n")
    meta = {"kind": PAIRS_KIND, "train_pairs": len(train), "val_pairs": len(val), "sources": list(corpus),
            "tokenizer": tokenizer_spec, "val_fraction": val_fraction}
    write_json(out_dir / "meta.json", meta)  # last: its presence means the directory is complete
    return meta
