"""The `[classify]` section of a classifier run's config.json: its labels, data and head.

Declared by lyre.run.config itself (OPTIONAL_SECTIONS), so every reader of config.json accepts it
and `--set classify.pooling=mean` (or `pooling=mean`) changes it like any other field. A run
with this section is a classifier run (RunDir.kind() == "classify"): `lyre classify` and the
classification route of `lyre serve` need it, the text-generating commands refuse it.
Torch-free, and lyre.run.config imports it: RunConfig is named for type checking only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lyre.core.errors import LyreError

if TYPE_CHECKING:
    from lyre.run.config import RunConfig

POOLINGS = ("last_nonpad", "last", "mean", "last+mean")
TRAINABLE = ("head", "blocks", "all", "lora")


@dataclass
class ClassifyConfig:
    """What a classifier adds to a fine-tuned run; the data file, its split, the epochs and the
    base run are in the run's [finetune] section (lyre.finetune.config), as for every task."""

    # The classes, in the order of the head's outputs (index 0 first). Empty: taken from the
    # training data (numbers in numeric order, other names in order of first appearance).
    labels: list[str] = field(default_factory=list)
    text_column: str = ""  # the column (header name) or JSON key of the text; empty: detected
    label_column: str = ""  # the same for the label
    balance: bool = False  # undersample every class to the size of the smallest (the book's way)
    pooling: str = "last_nonpad"  # last_nonpad | last | mean | last+mean: what the head reads
    trainable: str = "all"  # head | blocks (last `blocks` + final norm: the book's) | all | lora
    blocks: int = 1  # trainable=blocks: how many of the last transformer blocks train
    eval_train_rows: int = 512  # training rows scored at each evaluation (0: all)
    # Crop augmentation: the share of training texts cut, each time drawn, to a random prefix
    # of their own tokens (same label). Without it a short text looks like ham to a model
    # trained on SMS data, where nearly all spam is long (docs/classify.md, "Short texts").
    crop: float = 0.5
    # Label smoothing of the training loss (0: plain cross-entropy): the target puts 1 - s on
    # the true class and s spread over all classes, so the head stops pushing logits apart
    # once it is right. Evaluation losses stay plain cross-entropy.
    label_smoothing: float = 0.0
    # Filled in when the run starts:
    pad_id: int = 0  # the id padding uses: <|endoftext|> when the tokenizer has it
    pad_to: int = 0  # pooling=last: every batch padded to this length (the longest training text)

    def validate(self) -> None:
        if self.pooling not in POOLINGS:
            raise LyreError(f"classify.pooling must be one of {', '.join(POOLINGS)}; got {self.pooling!r}")
        if self.trainable not in TRAINABLE:
            raise LyreError(f"classify.trainable must be one of {', '.join(TRAINABLE)}; "
                            f"got {self.trainable!r}")
        if self.blocks < 1:
            raise LyreError(f"classify.blocks must be at least 1; got {self.blocks}")
        for name in ("eval_train_rows", "pad_to"):
            if getattr(self, name) < 0:
                raise LyreError(f"classify.{name} must not be negative; got {getattr(self, name)}")
        if not 0.0 <= self.crop <= 1.0:
            raise LyreError(f"classify.crop is a share of the training texts, from 0 to 1; got {self.crop}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise LyreError("classify.label_smoothing must be at least 0 and below 1; "
                            f"got {self.label_smoothing}")
        if len(set(self.labels)) != len(self.labels):
            raise LyreError(f"classify.labels has a label twice: {self.labels}")


def is_classifier(config: RunConfig) -> bool:
    return "classify" in config.extras


def classify_section(config: RunConfig, run_dir: object = "the run") -> ClassifyConfig:
    """The run's [classify] section, or a LyreError that names what the run is instead."""
    section = config.extras.get("classify")
    if section is None:
        raise LyreError(f"{run_dir} is not a classifier ({describe_kind(config)}); train one with "
                        "`lyre finetune BASE --task classify --data FILE --out RUN`")
    return section


def describe_kind(config: RunConfig) -> str:
    """What trained the run, in words, for error messages."""
    if "finetune" in config.extras:
        return f"a model fine-tuned with --task {config.kind}"
    return f"a language model (kind {config.kind!r})"
