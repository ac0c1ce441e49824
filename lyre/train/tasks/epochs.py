"""Epoch-based sampling for tasks that walk a fixed set of examples (SFT, DPO, classification)."""

from __future__ import annotations

from typing import Any

import torch


class EpochOrder:
    """Which example comes next: a seeded permutation per epoch, walked in order.

    Its whole state is (epoch, position): saved in checkpoints through the task's state_dict,
    so a resumed run takes exactly the examples the uninterrupted run would have taken.
    drop_last=True starts the next epoch instead of a batch that would run past the epoch's
    end (the book's DataLoader(drop_last=True)), so every batch is full of distinct rows.
    """

    def __init__(self, n: int, seed: int, *, drop_last: bool = False) -> None:
        self.n, self.seed, self.drop_last = n, seed, drop_last
        self.epoch, self.position = 0, 0
        self._order: tuple[int, list[int]] | None = None

    def permutation(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(self.n, generator=g).tolist())
        return self._order[1]

    def take(self, rows: int) -> list[int]:
        """The next `rows` indices, crossing into the next epoch when needed."""
        if self.drop_last and self.position + rows > self.n and self.position > 0:
            self.epoch, self.position = self.epoch + 1, 0
        out: list[int] = []
        while len(out) < rows:  # with drop_last only when a batch holds more rows than the split
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
