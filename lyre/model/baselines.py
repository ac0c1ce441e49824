"""Baselines that train with the same loop as GPT.

BigramLM is the first model of "Let's build GPT": each token looks up the logits of the next
token in a table, with no context at all. Its loss is the bar any real model must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.errors import LyreError
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

    uses_kv_cache = False  # no attention: nothing to cache

    def __init__(self, config: BigramConfig) -> None:
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)
        nn.init.normal_(self.table.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = False) -> int:
        return 0 if non_embedding else self.table.weight.numel()

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        all_logits: bool = False,
        logits_at: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same contract as GPT.forward; positions, masks and caches mean nothing here."""
        if cache is not None:
            cache.advance(idx.size(1))
        if targets is None and not all_logits:
            if logits_at is not None:
                idx = idx[torch.arange(idx.size(0), device=idx.device), logits_at].unsqueeze(1)
            return self.table(idx[:, -1:]), None
        logits = self.table(idx)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        return [{"params": list(self.parameters()), "weight_decay": 0.0}]
