"""Models: every family lyre can build, registered by the name that `model.arch` gives.

    gpt      the GPT decoder (lyre/model/gpt.py)
    bigram   the first model of "Let's build GPT", the bar any model must beat (baselines.py)

The registry (lyre/model/registry.py) says how to add one.
"""

from __future__ import annotations

from lyre.model.baselines import BigramConfig, BigramLM
from lyre.model.gpt import GPT, GPTConfig, KVCache, reference_attention
from lyre.model.registry import (
    ModelFamily,
    build_model,
    families,
    get_family,
    register_family,
    unregister_family,
)

FAMILIES = (
    ModelFamily("gpt", GPTConfig, GPT, "decoder-only transformer (GPT-2 and modern options)"),
    ModelFamily("bigram", BigramConfig, BigramLM, "next token from the current one alone (baseline)"),
)
for _family in FAMILIES:
    register_family(_family)

__all__ = [
    "GPT", "GPTConfig", "KVCache", "BigramLM", "BigramConfig", "build_model", "reference_attention",
    "ModelFamily", "register_family", "unregister_family", "get_family", "families",
]
