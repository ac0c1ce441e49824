"""Supervised fine-tuning: learn to write the answers of instruction or chat data.

The data comes ready as token sequences with a mask (lyre.finetune.encode: the prompt as the
chat template lays it out, the answer, <|endoftext|>). A batch is the next `rows` sequences of
the epoch's shuffled order, right-padded to the longest one; the targets are the next tokens
where the mask says "answer" and -100 (ignored by the loss) on the prompt and the padding, so
the model learns to answer, not to predict the question. `train_on_prompt` puts the prompt's
tokens back into the loss (the book's default; docs/finetune.md has the measured difference).

The order of an epoch is a permutation drawn from (seed, epoch), so the whole sampling state is
(epoch, position): saved in every checkpoint, a resumed run draws the very same batches.
Evaluation scores the answer tokens of every validation sequence (always with the mask, so runs
with and without train_on_prompt report the same quantity) and of a fixed slice of the
training sequences. The task may also stop the run early: after `early_stop` evaluations
without a better validation loss.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.train.tasks.epochs import EpochOrder

IGNORE = -100


def pad_batch(examples, pad_id: int, train_on_prompt: bool = False,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) [rows, longest - 1]: targets are the next tokens where they are trained,
    IGNORE on the prompt (unless train_on_prompt) and on the padding."""
    width = max(len(e.ids) for e in examples) - 1
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        ids = torch.tensor(e.ids, dtype=torch.long)
        n = len(e.ids) - 1
        x[row, :n] = ids[:-1]
        trained = torch.ones(n, dtype=torch.bool) if train_on_prompt else torch.tensor(e.mask[1:])
        y[row, :n] = torch.where(trained, ids[1:], IGNORE)
    return x.to(device), y.to(device)


def masked_loss_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """(sum of the per-token losses, number of scored tokens) of one batch."""
    logits, _ = model(x, y)
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss.item(), int((y != IGNORE).sum().item())


class EarlyStop:
    """Counts evaluations since the best validation loss; part of the task's saved state."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best, self.stale = patience, math.inf, 0

    def update(self, val_loss: float) -> None:
        if val_loss < self.best:
            self.best, self.stale = val_loss, 0
        else:
            self.stale += 1

    def reason(self) -> str | None:
        if self.patience and self.stale >= self.patience:
            return (f"the val loss has not improved for {self.stale} evaluations "
                    f"(best {self.best:.4f}; finetune.early_stop = {self.patience})")
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best if math.isfinite(self.best) else None, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state.get("best")
        self.best, self.stale = (math.inf if best is None else float(best)), int(state.get("stale", 0))


class SFTTask:
    name = "sft"
    best_metric = "val_loss"
    higher_is_better = False

    def __init__(self, prepared, autocast: AbstractContextManager | None = None,
                 eval_batch_size: int = 8) -> None:
        """`prepared`: a lyre.finetune.prepare.Prepared (the encoded splits, the base model)."""
        self.prepared = prepared
        self.train_examples, self.val_examples = prepared.train, prepared.val
        self.autocast = autocast or nullcontext()
        self.eval_batch_size = eval_batch_size
        ft = prepared.config.extras["finetune"]
        self.train_on_prompt = ft.train_on_prompt
        self.pad_id = prepared.pad_id
        self.order = EpochOrder(len(self.train_examples), prepared.config.train.seed)
        self.early = EarlyStop(ft.early_stop)

    def setup(self, config, run, *, resume: bool, dist: Any) -> None:
        self.config = config
        dist.main_first(lambda: self.prepared.write_run_files(run, resume), others=False)

    def build_model(self, config) -> nn.Module:
        return self.prepared.build_model(config)

    def draw(self, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        batch = [self.train_examples[i] for i in self.order.take(rows)]
        return pad_batch(batch, self.pad_id, self.train_on_prompt, device)

    def loss(self, forward: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return forward(x, y)[1]

    def _score(self, model: nn.Module, examples, device) -> float:
        total, count = 0.0, 0
        for start in range(0, len(examples), self.eval_batch_size):
            x, y = pad_batch(examples[start:start + self.eval_batch_size], self.pad_id, False, device)
            s, n = masked_loss_sum(model, x, y)
            total, count = total + s, count + n
        return total / max(count, 1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, exact: bool) -> dict[str, Any]:
        device = next(model.parameters()).device
        # The training slice: as many sequences as the val split has (at least 32), fixed.
        train_slice = self.train_examples[:max(32, len(self.val_examples))]
        was_training = model.training
        model.eval()
        try:
            with self.autocast:
                val = self._score(model, self.val_examples, device) if self.val_examples else math.nan
                train = self._score(model, train_slice, device)
        finally:
            model.train(was_training)
        epoch = self.order.epoch + self.order.position / max(self.order.n, 1)
        if not self.val_examples:  # no val split (val_fraction=0): select on the training slice
            return {"train_loss": train, "val_loss": train, "epoch": epoch}
        self.early.update(val)
        return {"train_loss": train, "val_loss": val, "val_perplexity": math.exp(min(val, 50.0)),
                "epoch": epoch}

    def should_stop(self) -> str | None:
        return self.early.reason()

    def generators(self) -> dict[str, torch.Generator]:
        return {}  # the order is a function of (seed, epoch): nothing random to save

    def state_dict(self) -> dict[str, Any]:
        return {**self.order.state_dict(), "early_stop": self.early.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)
        self.early.load_state_dict(state.get("early_stop", {}))
