"""Language modelling: predict the next token of random windows of a corpus (pretraining).

The data is a corpus tokenized once into RUN_DIR/data (or `data.data_dir`, made by `lyre
prepare`): token shards, or the single train.bin/val.bin of older directories, read through
memory maps. A batch is `rows` windows of block_size + 1 tokens drawn by the streaming loader
(lyre.data.loader.WindowLoader) from one seeded generator, anywhere or at document starts
(`data.align`), so a resumed run draws the same windows as an uninterrupted one. Under torchrun
each process reads only its own rows. Evaluation scores windows of both splits; `exact` scores
every val token once (lyre.data.corpus.evaluate_loss).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lyre.core.errors import LyreError
from lyre.data.corpus import (
    evaluate_loss,
    file_sha256,
    get_batch,
    is_prepared,
    load_meta,
    load_split,
    prepare,
)
from lyre.data.loader import WindowLoader
from lyre.model import build_model
from lyre.run import checkpoint as ckpt
from lyre.run.config import RunConfig, config_from_json
from lyre.run.rundir import RunDir
from lyre.train.tasks.random_draws import RandomDrawTask


class LanguageModelingTask(RandomDrawTask):
    name = "lm"

    def setup(self, config: RunConfig, run: RunDir, *, resume: bool, dist: Any) -> None:
        self.config = config
        self.seed_draws(config.train.seed)
        data_dir = dist.main_first(lambda: data_dir_for(config, run, resume))
        self.meta = load_meta(data_dir)
        self.train_tokens = load_split(data_dir, "train")
        self.val_tokens = load_split(data_dir, "val")
        self._check_length()
        self.loader = WindowLoader(self.train_tokens, config.model.block_size, self.batches,
                                   align=config.data.align, bos_id=self.meta.get("eot_id"),
                                   order=config.data.order)
        # Under torchrun the trainer asks for the global batch and keeps this process's rows.
        self.rank, self.world = dist.rank, dist.world_size if dist.enabled else 1
        if resume and run.tokenizer_dir.is_dir():
            check_same_tokenizer(data_dir, run.tokenizer_dir, "the run's (resume)")
        elif config.train.init_from and (Path(config.train.init_from) / "tokenizer").is_dir():
            check_same_tokenizer(data_dir, Path(config.train.init_from) / "tokenizer",
                                 f"train.init_from's ({config.train.init_from})")
        if dist.is_main:
            run.take_tokenizer(data_dir / "tokenizer", resume)

    def build_model(self, config: RunConfig) -> nn.Module:
        return init_model(config, self.meta["vocab_size"])

    def draw(self, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.world == 1 and self.loader.align == "none" and self.loader.order == "random":
            return get_batch(self.train_tokens, rows, self.config.model.block_size, self.batches,
                             device)  # the classic draw (the same offsets as the loader's)
        share = rows // self.world  # rows is the global batch: read only this process's share
        return self.loader.draw(rows, device, slice(self.rank * share, (self.rank + 1) * share))


    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()  # the sequential position, and where the last window was

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def loss(self, forward: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return forward(x, y)[1]

    def evaluate(self, model: nn.Module, exact: bool) -> dict[str, Any]:
        cfg, block = self.config.train, self.config.model.block_size
        device = next(model.parameters()).device
        windows = None if exact or cfg.eval_windows <= 0 else cfg.eval_windows
        with self.autocast:
            val = evaluate_loss(model, self.val_tokens, block, device=device, max_windows=windows)
            train = evaluate_loss(model, self.train_tokens, block, device=device,
                                  max_windows=cfg.eval_windows or 64)
        return {
            "train_loss": train["loss"],
            "val_loss": val["loss"],
            "val_perplexity": math.exp(min(val["loss"], 50.0)),
            "val_exact": windows is None,
        }

    def _check_length(self) -> None:
        need = self.config.model.block_size + 1
        for split, tokens in (("train", self.train_tokens), ("val", self.val_tokens)):
            if len(tokens) < need:
                raise LyreError(
                    f"the {split} split has {len(tokens)} tokens, fewer than block_size+1 = {need}; "
                    "use a longer corpus or a smaller model.block_size"
                )


def data_dir_for(config: RunConfig, run: RunDir, resume: bool) -> Path:
    """The prepared token files: data.data_dir, or RUN_DIR/data prepared on first use.

    A resumed run keeps its tokens even if the corpus has moved since. A fresh run re-prepares
    RUN_DIR/data unless it came from this very corpus: a failed or overwritten (--force) run
    may have left another corpus's tokens there.
    """
    if config.data.data_dir:
        return Path(config.data.data_dir)
    data_dir = run.data_dir
    if resume and is_prepared(data_dir):
        return data_dir
    if not prepared_from(data_dir, config):
        corpus = [Path(p) for p in config.data.corpus]
        prepare(corpus, config.data.tokenizer, data_dir, val_fraction=config.data.val_fraction, force=True)
    return data_dir


def prepared_from(data_dir: Path, config: RunConfig) -> bool:
    """True if data_dir holds the tokens of config's corpus files, tokenizer and val split."""
    try:
        meta = load_meta(data_dir)
        sources = [(s["path"], s["bytes"], s["sha256"]) for s in meta["sources"]]
    except (LyreError, KeyError, TypeError):
        return False
    paths = [Path(p) for p in config.data.corpus]
    if (meta.get("tokenizer"), meta.get("val_fraction")) != (config.data.tokenizer, config.data.val_fraction):
        return False
    if meta.get("tokenizer") == "char" and "eot_id" not in meta:
        return False  # prepared before char tokenizers reserved <|endoftext|>: prepare it again
    if [(path, size) for path, size, _ in sources] != [
        (str(p), p.stat().st_size if p.is_file() else -1) for p in paths
    ]:
        return False
    return all(digest == file_sha256(p) for p, (_, _, digest) in zip(paths, sources, strict=True))


def check_same_tokenizer(data_dir: Path, other: Path, whose: str) -> None:
    """A prepared directory must use the tokenizer of the run it continues or starts from:
    the same ids for the same bytes. One-line LyreError otherwise."""
    from lyre.tokenizers import load_tokenizer

    ours, theirs = load_tokenizer(Path(data_dir) / "tokenizer"), load_tokenizer(other)
    if token_table(ours) != token_table(theirs):
        raise LyreError(
            f"{data_dir} was prepared with another tokenizer ({ours.kind}, {ours.vocab_size:,} "
            f"tokens) than {whose} ({theirs.kind}, {theirs.vocab_size:,} tokens, {other}); "
            f"prepare the data with --tokenizer {other}")


def token_table(tokenizer) -> tuple:
    """What makes two tokenizers the same: every id's bytes and the special tokens."""
    return (tokenizer.vocab_size, tuple(sorted(tokenizer.special_tokens.items())),
            tuple(tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)
                  if i not in tokenizer.special_tokens.values()))


def init_model(config: RunConfig, vocab_size: int) -> nn.Module:
    """Random init, or the weights of another run (fine-tuning) when train.init_from is set."""
    if not config.train.init_from:
        config.model.vocab_size = vocab_size
        return build_model(config.model)
    source = Path(config.train.init_from)
    source_config = config_from_json(RunDir(source).config_path)
    # The architecture comes from the source run; training options (dropout aside) from ours.
    dropout = config.model.dropout
    config.model = source_config.model
    config.model.dropout = dropout
    if config.model.vocab_size < vocab_size:
        raise LyreError(
            f"init_from {source} has a vocabulary of {config.model.vocab_size} tokens but the "
            f"data's tokenizer has {vocab_size}; prepare the data with the source run's tokenizer"
        )
    model = build_model(config.model)
    ckpt.load_checkpoint(source, ckpt.latest_checkpoint(source) or "last", model=model)
    return model
