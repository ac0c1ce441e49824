"""Generating text from a model: the short functions, all running on lyre.engine.

    stream(model, tokenizer, "Sing, O goddess", SamplingConfig(temperature=0.8))  # text pieces
    generate(model, tokenizer, "Sing, O goddess")                                  # one string
    generate_tokens(model, prompt_ids, cfg)                                        # token ids

For batches, several samples, stop strings, log-probabilities or a step-level API, use
`lyre.engine.Engine` directly; these functions build one and call it, so there is one
generation path only. Like the engine, they leave `model` as it is (classes, weights, train or
eval mode); `device`, when given, must be where the model already is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import torch
import torch.nn as nn

from lyre.constrain import Constraint
from lyre.engine import Completion, Engine, SamplingConfig, Stream

__all__ = [
    "Completion", "Constraint", "Engine", "SamplingConfig", "Stream", "crop_prompt", "generate",
    "generate_tokens", "prompt_ids", "stream",
]


def crop_prompt(prompt: list[int], block_size: int, reserve: int = 1) -> tuple[list[int], int]:
    """Keep the last (block_size - reserve) tokens; returns (cropped prompt, tokens dropped)."""
    keep = max(1, block_size - reserve)
    dropped = max(0, len(prompt) - keep)
    return prompt[dropped:], dropped


def prompt_ids(engine: Engine, prompt: str | None) -> tuple[list[int], int]:
    """The ids `lyre sample` continues and how many were cropped from the prompt's start to fit
    the context. No prompt is the start of a text: <|endoftext|>, or a newline for a tokenizer
    without it."""
    if prompt is None:
        prompt = "" if engine.tokenizer.eot_id is not None else "\n"
    return crop_prompt(engine.encode(prompt), engine.block_size)


def stream(
    model: nn.Module,
    tokenizer,
    prompt: str | Sequence[int],
    cfg: SamplingConfig | None = None,
    device: torch.device | str | None = None,
    *,
    constraint: Constraint | None = None,
) -> Stream:
    """Text pieces of one continuation of `prompt` as they are produced (see Engine.stream).
    `constraint` (JSON schema, regex, choice, grammar: docs/structured.md) overrides cfg's."""
    if constraint is not None:
        cfg = replace(cfg or SamplingConfig(), constraint=constraint)
    return Engine(model, tokenizer, device).stream(prompt, cfg)


def generate(
    model: nn.Module,
    tokenizer,
    prompt: str | Sequence[int],
    cfg: SamplingConfig | None = None,
    device: torch.device | str | None = None,
    *,
    constraint: Constraint | None = None,
) -> str:
    """The whole continuation of `prompt` as one string, e.g. JSON valid under a schema with
    `constraint=Constraint.json(schema)` (docs/structured.md)."""
    return "".join(stream(model, tokenizer, prompt, cfg, device, constraint=constraint))


def generate_tokens(
    model: nn.Module,
    prompt: Sequence[int],
    cfg: SamplingConfig | None = None,
    *,
    stop_ids: Iterable[int] = (),
    device: torch.device | str | None = None,
) -> Iterator[int]:
    """New token ids of one continuation, one at a time; ends before a token of `stop_ids`."""
    cfg = replace(cfg or SamplingConfig(), stop_token_ids=list(stop_ids), num_samples=1)
    batch = Engine(model, None, device).new_batch(1)
    (row,) = batch.add([prompt], cfg)
    sent = 0
    while True:
        yield from row.tokens[sent:]
        sent = len(row.tokens)
        if row.finished:
            return
        batch.step()
