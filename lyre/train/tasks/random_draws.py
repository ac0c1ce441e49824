"""What "lm" and "seq2seq" share: batches drawn at random by one seeded generator.

A resumed run restores the generator from the checkpoint (`generators()`), so it draws exactly
the batches the uninterrupted run would have drawn: the generator is the whole sampling state.
Both train to `max_iters` and keep the checkpoint with the lowest validation loss.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch


class RandomDrawTask:
    best_metric = "val_loss"
    higher_is_better = False

    def __init__(self, autocast: AbstractContextManager | None = None) -> None:
        self.autocast = autocast or nullcontext()  # the trainer's mixed precision, for evaluation
        self.batches = torch.Generator()

    def seed_draws(self, seed: int) -> None:
        self.batches.manual_seed(seed)

    def generators(self) -> dict[str, torch.Generator]:
        return {"batches": self.batches}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def should_stop(self) -> str | None:
        return None  # trains to max_iters
