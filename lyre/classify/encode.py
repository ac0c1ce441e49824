"""Texts to token ids for a classifier: the base model's tokenizer, cut to fit the context.

A text longer than the limit keeps its first tokens (the book's choice); how many texts were
cut is counted and reported, never silent. Character-level tokenizers replace characters they
never saw (lyre.tokenizers.char) instead of refusing the text: labelled data is full of digits
and symbols a small pretraining corpus may lack, and one odd character should not stop a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lyre.classify.data import Example
from lyre.tokenizers import Tokenizer


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: list[int] = field(default_factory=list)  # class indices; empty for unlabelled texts
    truncated: int = 0  # texts cut to the limit


def token_limit(max_length: int, block_size: int) -> int:
    """Tokens kept per text: classify.max_length when set, never more than the context."""
    return min(max_length, block_size) if max_length else block_size


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    if tokenizer.kind == "char":
        return tokenizer.encode(text, unknown="replace")
    return tokenizer.encode(text)


def encode_texts(tokenizer: Tokenizer, texts: list[str], limit: int) -> Encoded:
    ids, truncated = [], 0
    for text in texts:
        seq = encode_text(tokenizer, text)
        if len(seq) > limit:
            seq, truncated = seq[:limit], truncated + 1
        ids.append(seq or [0])  # an all-whitespace text may encode to nothing in odd tokenizers
    return Encoded(ids, truncated=truncated)


def encode_examples(tokenizer: Tokenizer, examples: list[Example], labels: list[str],
                    limit: int) -> Encoded:
    index = {name: i for i, name in enumerate(labels)}
    encoded = encode_texts(tokenizer, [e.text for e in examples], limit)
    encoded.labels = [index[e.label] for e in examples]
    return encoded


def run_token_limit(config: Any) -> int:
    """Tokens kept per text by a classifier run. With pooling=last every batch is padded to
    classify.pad_to, and a longer text is cut to it too, so that the last position is the same
    for a text whatever it is batched with (the book's fixed max_length)."""
    cls, ft = config.extras["classify"], config.extras["finetune"]
    limit = token_limit(ft.max_length, config.model.block_size)
    return min(limit, cls.pad_to) if cls.pooling == "last" and cls.pad_to else limit
