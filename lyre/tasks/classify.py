"""Classification: learn the label of each text (spam or not, sentiment, topic, ...).

The run's [classify] section (lyre.classify.config) names the data and the head. On a fresh
run the task reads the data file (lyre.classify.data: checks, balance, split), keeps the splits
in RUN/data/{train,val,test}.jsonl and the base run's tokenizer in RUN/tokenizer, so a resumed
run reads exactly the same rows even if the file has changed since. The labels, the padding
id and, unless given with --set, train.max_iters (classify.epochs passes over the training
split) and train.eval_interval (once per epoch) are filled into the config.

A batch is the next `rows` texts of the epoch's shuffled order, right-padded to the longest
(or to classify.pad_to for pooling=last), as (ids, lengths, labels). An epoch's order is a
permutation drawn from (train.seed, epoch), so the whole sampling state is (epoch, position),
saved in every checkpoint: a resumed run draws the very same batches.

Evaluation scores every validation text and a fixed slice of the training texts: loss and
accuracy; `val_accuracy` picks the best checkpoint. The full report (per-class precision,
recall, F1, confusion matrices on val and test) is written once training ends
(lyre.classify.finetune).
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.classify.build import build_classifier
from lyre.classify.config import classify_section
from lyre.classify.data import load_dataset, read_split, write_split
from lyre.classify.encode import Encoded, encode_examples, token_limit
from lyre.classify.model import pad_batch, score
from lyre.config import RunConfig
from lyre.devices import autocast_context
from lyre.errors import LyreError
from lyre.rundir import RunDir
from lyre.tokenizers import load_tokenizer

SPLITS = ("train", "val", "test")


class EpochOrder:
    """Which row comes next: a seeded permutation per epoch, walked in order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self.epoch, self.position = 0, 0
        self._order: tuple[int, list[int]] | None = None

    def permutation(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(self.n, generator=g).tolist())
        return self._order[1]

    def take(self, rows: int) -> list[int]:
        """The next `rows` indices; a batch that would run past the epoch's end starts the next
        epoch instead (the book's drop_last=True), so every batch is full."""
        if self.position + rows > self.n and self.position > 0:
            self.epoch, self.position = self.epoch + 1, 0
        out: list[int] = []
        while len(out) < rows:  # only when a batch holds more rows than the split
            if self.position >= self.n:
                self.epoch, self.position = self.epoch + 1, 0
            k = min(rows - len(out), self.n - self.position)
            out += self.permutation(self.epoch)[self.position:self.position + k]
            self.position += k
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state.get("epoch", 0)), int(state.get("position", 0))


class ClassificationTask:
    name = "classify"
    best_metric = "val_accuracy"
    higher_is_better = True

    def __init__(self, *, steps_from_epochs: bool = True, eval_each_epoch: bool = True,
                 verbose: bool = True) -> None:
        """steps_from_epochs / eval_each_epoch: set train.max_iters / train.eval_interval from
        the data on a fresh run (False when the user set them)."""
        self.steps_from_epochs, self.eval_each_epoch = steps_from_epochs, eval_each_epoch
        self.verbose = verbose
        self.resume = False

    # ---- data ----------------------------------------------------------------------------

    def setup(self, config: RunConfig, run: RunDir, *, resume: bool, dist: Any) -> None:
        self.config, self.resume = config, resume
        cfg = classify_section(config, run.path)
        cfg.validate()
        self.autocast = autocast_context(dist.device, config.train.dtype)
        if not resume:
            dist.main_first(lambda: self._prepare(config, run, write=dist.is_main))
        self.splits = {name: read_split(run.data_dir / f"{name}.jsonl") for name in SPLITS}
        if not self.splits["train"] or not self.splits["val"]:
            raise LyreError(f"{run.data_dir} lacks the training or validation split; start the run "
                            "again without --resume")
        tokenizer = load_tokenizer(run.tokenizer_dir)
        limit = token_limit(cfg.max_length, config.model.block_size)
        self.encoded: dict[str, Encoded] = {
            name: encode_examples(tokenizer, rows, cfg.labels, limit)
            for name, rows in self.splits.items()
        }
        if not resume:
            self._complete_config(config, tokenizer, limit, dist.world_size)
        self.order = EpochOrder(len(self.encoded["train"].ids), config.train.seed)
        self.steps_per_epoch = self._steps_per_epoch(config, dist.world_size)
        if self.verbose and dist.is_main and not resume:
            self._describe(config)

    def _prepare(self, config: RunConfig, run: RunDir, *, write: bool) -> None:
        """Read and split the data (every process: it is deterministic); rank 0 writes."""
        cfg = config.extras["classify"]
        dataset = load_dataset(cfg)
        cfg.labels = dataset.labels
        if not write:
            return
        for note in dataset.notes:
            print(f"lyre: {note}", file=sys.stderr)
        run.data_dir.mkdir(parents=True, exist_ok=True)
        for name in SPLITS:
            write_split(run.data_dir / f"{name}.jsonl", getattr(dataset.splits, name))
        source = config.train.init_from or cfg.base
        shutil.rmtree(run.tokenizer_dir, ignore_errors=True)
        if not source:
            raise LyreError("a classifier needs a base run for its tokenizer (train.init_from)")
        shutil.copytree(f"{source}/tokenizer", run.tokenizer_dir)

    def _complete_config(self, config: RunConfig, tokenizer: Any, limit: int, world: int) -> None:
        cfg = config.extras["classify"]
        cfg.pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
        if cfg.pooling == "last":
            cfg.pad_to = min(limit, max(len(s) for s in self.encoded["train"].ids))
        per_epoch = self._steps_per_epoch(config, world)
        if self.steps_from_epochs:
            config.train.max_iters = cfg.epochs * per_epoch
        if self.eval_each_epoch:
            config.train.eval_interval = per_epoch

    def _steps_per_epoch(self, config: RunConfig, world: int) -> int:
        self.rows_per_step = config.train.batch_size * config.train.grad_accum * world
        return max(1, len(self.encoded["train"].ids) // self.rows_per_step)

    def _describe(self, config: RunConfig) -> None:
        cfg = config.extras["classify"]
        sizes = ", ".join(f"{len(self.splits[n]):,} {n}" for n in SPLITS)
        cut = sum(e.truncated for e in self.encoded.values())
        limit = token_limit(cfg.max_length, config.model.block_size)
        print(f"lyre: {len(cfg.labels)} classes ({', '.join(cfg.labels)}); {sizes}; "
              f"{self.steps_per_epoch:,} steps per epoch", file=sys.stderr)
        if cut:
            print(f"lyre: {cut:,} text(s) longer than {limit} tokens were truncated to their first "
                  f"{limit}", file=sys.stderr)

    # ---- model and training --------------------------------------------------------------

    def build_model(self, config: RunConfig) -> nn.Module:
        # Fresh: the base run's weights. Resumed: the Trainer loads the run's own checkpoint.
        base = None if self.resume else (config.train.init_from or None)
        return build_classifier(config, base=base)

    def draw(self, rows: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        cfg = self.config.extras["classify"]
        picked = self.order.take(rows)
        train = self.encoded["train"]
        ids, lengths = pad_batch([train.ids[i] for i in picked], cfg.pad_id, cfg.pad_to, device)
        labels = torch.tensor([train.labels[i] for i in picked], dtype=torch.long, device=device)
        return ids, lengths, labels

    def loss(self, forward: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        ids, lengths, labels = batch
        return forward(ids, labels, lengths)[1]

    # ---- evaluation ----------------------------------------------------------------------

    def evaluate(self, model: nn.Module, exact: bool) -> dict[str, Any]:
        cfg = self.config.extras["classify"]
        train = self.encoded["train"]
        rows = len(train.ids) if exact or not cfg.eval_train_rows else cfg.eval_train_rows
        record: dict[str, Any] = {}
        for split, encoded in (("train", _head(train, rows)), ("val", self.encoded["val"])):
            loss, accuracy = self.loss_and_accuracy(model, encoded)
            record[f"{split}_loss"], record[f"{split}_accuracy"] = loss, accuracy
        # Epochs done: the rows an epoch uses are whole batches (the rest waits for the next).
        used = min(self.order.n, self.steps_per_epoch * self.rows_per_step)
        record["epoch"] = self.order.epoch + self.order.position / used
        return record

    def loss_and_accuracy(self, model: nn.Module, encoded: Encoded) -> tuple[float, float]:
        cfg = self.config.extras["classify"]
        with self.autocast:
            logits = score(model, encoded.ids, cfg.pad_id, cfg.pad_to)
        labels = torch.tensor(encoded.labels, dtype=torch.long)
        loss = F.cross_entropy(logits, labels).item()
        return loss, (logits.argmax(-1) == labels).float().mean().item()

    def generators(self) -> dict[str, torch.Generator]:
        return {}  # the order is a function of (seed, epoch): the position is the whole state

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


def _head(encoded: Encoded, rows: int) -> Encoded:
    return Encoded(encoded.ids[:rows], encoded.labels[:rows])
