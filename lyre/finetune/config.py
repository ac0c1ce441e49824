"""The `[finetune]` section of a fine-tuned run's config.json: what it was tuned from and on.

Declared by lyre.run.config itself (OPTIONAL_SECTIONS), so `--set finetune.epochs=3` (or `epochs=3`)
works like any other field and every reader of config.json accepts the section, in any process.
Torch-free and importing nothing of lyre but errors: lyre.run.config imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lyre.core.errors import LyreError


@dataclass
class FinetuneConfig:
    task: str = "sft"  # sft | dpo | classify (lyre.finetune.tasks.TASKS): the run's kind
    data: str = ""  # the data file it was tuned on
    val_data: str = ""  # explicit validation / test files; empty: split `data`
    test_data: str = ""
    val_fraction: float = 0.10  # the default split is 85 / 10 / 5 (train / val / test)
    test_fraction: float = 0.05
    split_seed: int = 123  # the shuffle before the split
    epochs: int = 2  # passes over the training split; train.max_iters caps the steps
    max_length: int = 0  # cut sequences to this many tokens (0: the model's context)
    train_on_prompt: bool = False  # also learn to predict the prompt (the book's default)
    early_stop: int = 0  # stop after N evaluations without a better val loss; 0: never
    unfrozen_blocks: int = 0  # full fine-tuning: train only the last N blocks; 0: all
    beta: float = 0.1  # DPO: how far the policy may move from the reference
    responses: bool = True  # generate answers for the test split at the end (responses.json)
    response_tokens: int = 256  # at most this many tokens per answer
    # Where the weights came from. A LoRA run loads them from here (its checkpoints hold only
    # the adapters), so the checkpoint's sha256 is kept to notice a base that has changed.
    base: str = ""  # a lyre run directory; relative paths are relative to this run
    base_checkpoint: str = ""
    base_sha256: str = ""
    base_source: str = ""  # what the user passed as BASE (a run, or a Hugging Face directory)

    def validate(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise LyreError(f"finetune.{name} must be in [0, 1); got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise LyreError("finetune.val_fraction + finetune.test_fraction leave no training data")
        for name in ("epochs", "max_length", "early_stop", "unfrozen_blocks", "response_tokens"):
            if getattr(self, name) < 0:
                raise LyreError(f"finetune.{name} must not be negative; got {getattr(self, name)}")
        if self.epochs == 0:
            raise LyreError("finetune.epochs must be at least 1")
        if not self.beta > 0:
            raise LyreError(f"finetune.beta must be positive; got {self.beta}")

