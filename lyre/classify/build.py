"""Build a classifier from a run config: the base model, its weights, the head, what trains.

Fine-tuning starts from the base run's weights (`train.init_from`: its `best` checkpoint, else
its latest); a resumed run or a finished one loads its own checkpoints, which hold the whole
classifier (base and head, LoRA adapters included as separate tensors).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lyre import checkpoint as ckpt
from lyre.classify.config import classify_section, is_classifier
from lyre.classify.model import SequenceClassifier, set_trainable
from lyre.config import RunConfig, config_from_json
from lyre.errors import LyreError
from lyre.model import build_model


def base_checkpoint(base: Path) -> str:
    """The base run's checkpoint a classifier starts from: `best`, else its latest."""
    if ckpt.checkpoint_exists(base, "best"):
        return "best"
    name = ckpt.latest_checkpoint(base)
    if name is None:
        raise LyreError(f"base {base} holds no checkpoint; train it first")
    return name


def read_base_config(base: str | Path) -> RunConfig:
    """The config of the run to fine-tune from; it must be a trained language model."""
    base = Path(base)
    if not (base / "config.json").is_file():
        what = "does not exist" if not base.exists() else "is not a lyre run (no config.json)"
        raise LyreError(f"base {base} {what}; pass a run directory made by `lyre train` or "
                        "`lyre import-hf`")
    config = config_from_json(base / "config.json")
    if is_classifier(config):
        raise LyreError(f"base {base} is already a classifier; fine-tune from the language model "
                        f"it was made from ({config.extras['classify'].base or 'its base'})")
    return config


def build_classifier(config: RunConfig, *, base: str | Path | None = None,
                     trainable: bool = True) -> SequenceClassifier:
    """The classifier `config` describes; with `base`, its language model holds base's weights.

    trainable: freeze what classify.trainable does not train (and put in LoRA adapters); a
    LoRA classifier must have its adapters to load its own checkpoints, so loading calls this
    with trainable=True too and merges afterwards.
    """
    cfg = classify_section(config)
    lm = build_model(config.model)
    if base is not None:
        base = Path(base)
        ckpt.load_checkpoint(base, base_checkpoint(base), model=lm, map_location="cpu")
    model = SequenceClassifier(lm, len(cfg.labels), cfg.pooling)
    if trainable:
        set_trainable(model, cfg.trainable, cfg.blocks, config.extras.get("lora"))
    return model


def load_classifier_model(run_dir: str | Path, checkpoint: str = "best",
                          device: torch.device | str = "cpu") -> tuple[RunConfig, SequenceClassifier, str]:
    """(config, model in eval mode, checkpoint name) of a classifier run; `best` falls back to
    the latest checkpoint. A run that is not a classifier is a LyreError that says what it is."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise LyreError(f"{run_dir} is not a run directory (no config.json)")
    config = config_from_json(run_dir / "config.json")
    classify_section(config, run_dir)
    name = checkpoint
    if not ckpt.checkpoint_exists(run_dir, name):
        name = ckpt.latest_checkpoint(run_dir) if checkpoint == "best" else None
        if name is None:
            raise LyreError(f"no checkpoint {checkpoint!r} in {run_dir}; train it first")
    config.model.dropout = 0.0
    model = build_classifier(config)
    ckpt.load_checkpoint(run_dir, name, model=model, map_location="cpu")
    if config.extras.get("lora") is not None:
        from lyre.lora import merge_lora

        merge_lora(model.base)  # plain Linear layers again: the same function, faster
    return config, model.to(device).eval().requires_grad_(False), name
