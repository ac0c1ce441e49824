"""Training tasks: what to learn, plugged into the one training loop (lyre.train.trainer.Trainer).

The Trainer owns the optimisation (schedule, accumulation, clipping, distributed processes,
checkpoints, signals, logging). A task owns everything about the data and the objective:

    setup(config, run, resume, dist)   load or prepare the data, save the run's tokenizer, set
                                       config fields that depend on the data (model.vocab_size)
    build_model(config)                the model to train when the caller passes none (random
                                       init, or the weights of train.init_from)
    draw(rows, device)                 the next `rows` rows of a batch, a tuple of tensors; the
                                       first is the input ids (its size counts the tokens)
    loss(forward, batch)               the scalar to minimise; `forward` is the (wrapped) model
    evaluate(model, exact)             metrics; must include `best_metric`
    should_stop()                      after an evaluation: a reason to end the run now (early
                                       stopping), or None
    generators()                       the torch.Generators its sampling uses, by name: saved in
                                       every checkpoint with the other RNG states
    state_dict() / load_state_dict()   any other sampling state (epoch, position), JSON-safe

so a resumed run draws exactly the batches the uninterrupted run would have drawn, whatever the
task. `best_metric` and `higher_is_better` choose the `best` checkpoint.

Tasks: "lm" (lyre.train.tasks.lm, next-token prediction on a corpus; the pretraining default),
"seq2seq" (lyre.train.tasks.seq2seq, (source, target) pairs for an encoder-decoder); both draw
their batches at random from one seeded generator (lyre.train.tasks.random_draws). `default_task`
picks by the model family's `decoder_only` capability.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn


@runtime_checkable
class Task(Protocol):
    name: str
    best_metric: str
    higher_is_better: bool

    def setup(self, config: Any, run: Any, *, resume: bool, dist: Any) -> None: ...

    def build_model(self, config: Any) -> nn.Module: ...

    def draw(self, rows: int, device: torch.device) -> tuple[torch.Tensor, ...]: ...

    def loss(self, forward: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, exact: bool) -> dict[str, Any]: ...

    def should_stop(self) -> str | None: ...

    def generators(self) -> dict[str, torch.Generator]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def default_task(config: Any, autocast: Any = None) -> Task:
    """The task a run trains when the caller names none: language modelling for a decoder-only
    family, (source, target) pairs for an encoder-decoder. Each refuses the other's data."""
    from lyre.core.errors import LyreError
    from lyre.data.pairs import looks_like_pairs
    from lyre.model import get_family

    if not get_family(config.model.arch).capabilities.decoder_only:
        from lyre.train.tasks.seq2seq import Seq2SeqTask

        return Seq2SeqTask(autocast)
    pairs = [] if config.data.data_dir else [c for c in config.data.corpus if looks_like_pairs(c)]
    if pairs:
        raise LyreError(
            f"data.corpus {pairs[0]} holds (source, target) pairs, but model.arch="
            f"{config.model.arch} is a language model; train an encoder-decoder on it "
            "(--set arch=seq2seq), or give plain text (rename the file to .txt to learn it as text)"
        )
    from lyre.train.tasks.lm import LanguageModelingTask

    return LanguageModelingTask(autocast)


__all__ = ["Task", "default_task"]
