"""Models: the GPT decoder and the baselines it is measured against."""

from __future__ import annotations

import torch.nn as nn

from lyre.model.baselines import BigramLM
from lyre.model.gpt import GPT, GPTConfig, KVCache, reference_attention


def build_model(config: GPTConfig) -> nn.Module:
    """The model named by config.arch."""
    return BigramLM(config) if config.arch == "bigram" else GPT(config)


__all__ = ["GPT", "GPTConfig", "KVCache", "BigramLM", "build_model", "reference_attention"]
