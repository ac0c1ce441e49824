"""Baselines that train with the same loop as GPT.

BigramLM is the first model of "Let's build GPT": each token looks up the logits of the next
token in a table, with no context at all. Its loss is the bar any real model must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.core.errors import LyreError
from lyre.model.gpt import KVCache


@dataclass
class BigramConfig:
    """The bigram's whole shape is its vocabulary; block_size only sets the training windows."""

    arch: str = "bigram"
    vocab_size: int = 65
    block_size: int = 256
    dropout: float = 0.0  # unused: kept so every family can be told dropout=0 for inference

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size"):
            if getattr(self, name) <= 0:
                raise LyreError(f"model.{name} must be positive; got {getattr(self, name)}")


class BigramLM(nn.Module):
    """next-token logits = table[current token]; only config.vocab_size is used."""

    uses_kv_cache = False  # no attention: nothing earlier than the current token is needed

    def __init__(self, config: BigramConfig) -> None:
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)
        nn.init.normal_(self.table.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = False) -> int:
        return 0 if non_embedding else self.table.weight.numel()

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """[B, T, vocab_size]: the table row of each token, the only thing this model computes.

        The row is both its hidden state and its next-token logits (there is no LM head), so
        its width is vocab_size. A cache holds nothing here; it only learns the positions moved.
        """
        if cache is not None:
            cache.advance(idx.size(1))
        return self.table(idx)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same contract as GPT.forward: every position's logits, or with a cache only the
        position the cache asks for (cache.logits_at, else the last)."""
        logits = self.hidden(idx, cache)
        if cache is not None and targets is None:
            at = cache.logits_at
            if at is None:
                return logits[:, -1:], None
            return logits[torch.arange(idx.size(0), device=idx.device), at].unsqueeze(1), None
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        return [{"params": list(self.parameters()), "weight_decay": 0.0}]
