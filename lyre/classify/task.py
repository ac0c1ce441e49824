"""Classification as a fine-tuning task: learn the label of each text (spam or not, sentiment,
topic, ...). FINETUNE_TASK is the `--task classify` entry of lyre.finetune.tasks: the one driver
(lyre.finetune.command) runs it with this package's hooks (prepare, the final report and plot);
ClassificationTask is its trainer task (the lyre.train.tasks.Task protocol).

What to learn comes prepared (lyre.classify.prepare: the config with its labels, the data read,
balanced and split). At set-up the task writes the run's copies of the splits,
RUN/data/{train,val,test}.jsonl, and of the base's tokenizer, so a resumed run reads exactly
the same rows even if the data file has changed since.

A batch is the next `rows` texts of the epoch's shuffled order, right-padded to the longest
(or to classify.pad_to for pooling=last), as (ids, lengths, labels). An epoch's order is a
permutation drawn from (train.seed, epoch), so the whole sampling state is (epoch, position),
saved in every checkpoint: a resumed run draws the very same batches.

Evaluation scores every validation text and a fixed slice of the training texts: loss and
accuracy; `val_accuracy` picks the best checkpoint, and finetune.early_stop evaluations
without a better one end the run. The full report (per-class precision, recall, F1,
confusion matrices on train, val and test) is written once training ends (`finish`, with
lyre.classify.finetune's evaluate_classifier).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.classify.build import build_classifier
from lyre.classify.data import read_split
from lyre.classify.encode import Encoded, encode_examples, run_token_limit
from lyre.classify.model import pad_batch, score
from lyre.classify.prepare import (
    LORA_DEFAULTS,
    SPLITS,
    TRAIN_DEFAULTS,
    PreparedClassifier,
    prepare_classifier,
)
from lyre.core.errors import LyreError
from lyre.core.io import write_json
from lyre.finetune.lora import count_parameters
from lyre.finetune.tasks import FinetuneTask
from lyre.run.config import RunConfig
from lyre.run.rundir import RunDir
from lyre.tokenizers import load_tokenizer
from lyre.train.tasks.epochs import EpochOrder


class ClassificationTask:
    name = "classify"
    best_metric = "val_accuracy"
    higher_is_better = True

    def __init__(self, prepared: PreparedClassifier,
                 autocast: AbstractContextManager | None = None) -> None:
        self.prepared = prepared
        self.autocast = autocast or nullcontext()
        self._best, self._since_best = -math.inf, 0  # early stopping on val accuracy

    # ---- data ----------------------------------------------------------------------------

    def setup(self, config: RunConfig, run: RunDir, *, resume: bool, dist: Any) -> None:
        self.config = config
        dist.main_first(lambda: self.prepared.write_run_files(run), others=False)
        self.splits = {name: read_split(run.data_dir / f"{name}.jsonl") for name in SPLITS}
        if not self.splits["train"] or not self.splits["val"]:
            raise LyreError(f"{run.data_dir} lacks the training or validation split; start the run "
                            "again without --resume")
        cls = config.extras["classify"]
        tokenizer = load_tokenizer(run.tokenizer_dir)
        limit = run_token_limit(config)
        self.encoded: dict[str, Encoded] = {
            name: encode_examples(tokenizer, rows, cls.labels, limit)
            for name, rows in self.splits.items()
        }
        self.order = EpochOrder(len(self.encoded["train"].ids), config.train.seed, drop_last=True)
        self.rows_per_draw = config.train.batch_size * dist.world_size

    # ---- model and training --------------------------------------------------------------

    def build_model(self, config: RunConfig) -> nn.Module:
        p = self.prepared
        model = build_classifier(config, base_dir=p.base_dir, base_checkpoint=p.base_checkpoint)
        trainable, total = count_parameters(model)
        cls = config.extras["classify"]
        what = {"head": "the head", "blocks": f"the head, the last {cls.blocks} block(s) and the final norm",
                "all": "every weight", "lora": "LoRA adapters and the head"}[cls.trainable]
        self.prepared.report(f"training {what}: {trainable:,} of {total:,} parameters ({trainable / total:.2%}); "
                    f"pooling {cls.pooling}")
        return model

    def draw(self, rows: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        cls = self.config.extras["classify"]
        epoch, position = self.order.epoch, self.order.position
        picked = self.order.take(rows)
        train = self.encoded["train"]
        seqs = [train.ids[i] for i in picked]
        if cls.crop:
            seqs = crop(seqs, cls.crop, self.config.train.seed, epoch, position)
        ids, lengths = pad_batch(seqs, cls.pad_id, cls.pad_to, device)
        labels = torch.tensor([train.labels[i] for i in picked], dtype=torch.long, device=device)
        return ids, lengths, labels

    def loss(self, forward: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        ids, lengths, labels = batch
        smoothing = self.config.extras["classify"].label_smoothing
        if not smoothing:
            return forward(ids, labels, lengths)[1]
        logits = forward(ids, None, lengths)[0]
        return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)

    # ---- evaluation ----------------------------------------------------------------------

    def evaluate(self, model: nn.Module, exact: bool) -> dict[str, Any]:
        cls = self.config.extras["classify"]
        train = self.encoded["train"]
        rows = len(train.ids) if exact or not cls.eval_train_rows else cls.eval_train_rows
        record: dict[str, Any] = {}
        for split, encoded in (("train", _head(train, rows)), ("val", self.encoded["val"])):
            loss, accuracy = self.loss_and_accuracy(model, encoded)
            record[f"{split}_loss"], record[f"{split}_accuracy"] = loss, accuracy
        # Epochs done: an epoch uses whole batches only (the rest waits for the next epoch).
        used = (self.order.n // self.rows_per_draw) * self.rows_per_draw or self.order.n
        record["epoch"] = self.order.epoch + self.order.position / used
        self._track(record["val_accuracy"])
        return record

    def _track(self, accuracy: float) -> None:
        if accuracy > self._best:
            self._best, self._since_best = accuracy, 0
        else:
            self._since_best += 1

    def should_stop(self) -> str | None:
        """finetune.early_stop evaluations in a row without a better val accuracy end the run."""
        patience = self.config.extras["finetune"].early_stop
        if patience and self._since_best >= patience:
            return f"{self._since_best} evaluations without a better val accuracy ({self._best:.4f})"
        return None

    def loss_and_accuracy(self, model: nn.Module, encoded: Encoded) -> tuple[float, float]:
        cls = self.config.extras["classify"]
        with self.autocast:
            logits = score(model, encoded.ids, cls.pad_id, cls.pad_to)
        labels = torch.tensor(encoded.labels, dtype=torch.long)
        loss = F.cross_entropy(logits, labels).item()
        return loss, (logits.argmax(-1) == labels).float().mean().item()

    def generators(self) -> dict[str, torch.Generator]:
        return {}  # the order is a function of (seed, epoch): the position is the whole state

    def state_dict(self) -> dict[str, Any]:
        best = None if self._best == -math.inf else self._best
        return {**self.order.state_dict(), "best_accuracy": best, "since_best": self._since_best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)
        best = state.get("best_accuracy")
        self._best = -math.inf if best is None else float(best)
        self._since_best = int(state.get("since_best", 0))


def crop(seqs: list[list[int]], share: float, seed: int, epoch: int, position: int) -> list[list[int]]:
    """Cut about `share` of the token lists to a random prefix (1 token up to all of them).

    The draw is a function of (seed, epoch, position), like the epoch's order, so a resumed
    run crops exactly as the uninterrupted one. A prefix is what the text would be had its
    writer stopped there: the label stays. In a causal model the prefix's last hidden state is
    the full text's hidden state at that position, so this teaches the head to read earlier
    positions too, instead of learning "long means spam".
    """
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + position)
    cut = torch.rand(len(seqs), generator=g) < share
    where = torch.rand(len(seqs), generator=g)
    return [seq[: 1 + int(w * len(seq))] if c else seq
            for seq, c, w in zip(seqs, cut.tolist(), where.tolist(), strict=True)]


def _head(encoded: Encoded, rows: int) -> Encoded:
    return Encoded(encoded.ids[:rows], encoded.labels[:rows])


# ----------------------------------------------------------------------------------------------
# The fine-tuning task: the driver's hooks


def _prepare(*, template: str | None = None, **kwargs: Any) -> PreparedClassifier:
    if template is not None:
        raise LyreError("--template is for generative fine-tuning; a classifier reads plain text")
    return prepare_classifier(**kwargs)


def _finish(done: Any, quiet: bool, plot: bool) -> None:
    """Score the best checkpoint on every split: RUN/classification.json, the tables, the plot."""
    from lyre.classify.finetune import REPORT_FILE, evaluate_classifier, format_reports

    done.report = evaluate_classifier(done.run_dir)
    write_json(done.run_dir / REPORT_FILE, done.report)
    if not quiet:
        print(format_reports(done.report))
    if plot:
        from lyre.classify.plot import plot_classifier

        plot_classifier(done.run_dir)


def _summary(done: Any) -> str:
    test = done.report.get("test", {}).get("accuracy")
    shown = f"test accuracy {test:.2%}" if test is not None else "no test split"
    return (f"done: step {done.train.step}, best val accuracy {done.train.best_metric:.2%}, {shown}; "
            f"run in {done.run_dir}; use it with `lyre classify {done.run_dir} \"some text\"`")


FINETUNE_TASK = FinetuneTask(
    "classify", "text classification on labelled TSV / CSV / JSONL: a head over the hidden states",
    make=ClassificationTask,
    train_defaults=TRAIN_DEFAULTS,
    lora_defaults=LORA_DEFAULTS,
    responses=False,
    drop_last=True,  # the book's DataLoader(drop_last=True): every batch full of distinct rows
    prepare=_prepare,
    finish=_finish,
    summary=_summary,
)
