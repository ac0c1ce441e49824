"""Build a classifier from a run config: the base model, its weights, the head, what trains.

A classifier's checkpoints hold the whole model (base and head), except with LoRA: then they
hold the adapters and the head only (a few MB), and the base's weights come from the base run
the [finetune] section points at, checked against the sha256 they had (lyre.finetune.base).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lyre.classify.config import classify_section
from lyre.classify.model import SequenceClassifier, set_trainable
from lyre.core.errors import LyreError
from lyre.finetune import base as base_mod
from lyre.finetune.lora import checkpoint_adapters_only, merge_lora
from lyre.model import build_model
from lyre.run import checkpoint as ckpt
from lyre.run.config import RunConfig
from lyre.run.rundir import RunDir


def build_classifier(config: RunConfig, *, base_dir: Path | None = None,
                     base_checkpoint: str = "") -> SequenceClassifier:
    """The classifier `config` describes, with what classify.trainable does not train frozen.

    base_dir: a lyre run whose weights the language model starts from (its own base first, if
    it is a LoRA run). With LoRA the adapters go in and the model's state_dict (so every
    checkpoint) holds the adapters and the head only.
    """
    cfg = classify_section(config)
    lm = build_model(config.model)
    if base_dir is not None:
        base_mod.load_weights(lm, base_dir, base_checkpoint or base_mod.pick_checkpoint(base_dir))
    model = SequenceClassifier(lm, len(cfg.labels), cfg.pooling)
    lora = config.extras.get("lora")
    set_trainable(model, cfg.trainable, cfg.blocks, lora)
    if lora is not None:
        checkpoint_adapters_only(model.base)  # base.* keys leave the state_dict; head.* stay
    return model


def load_classifier_model(run_dir: str | Path, checkpoint: str = "best",
                          device: torch.device | str = "cpu") -> tuple[RunConfig, SequenceClassifier, str]:
    """(config, model in eval mode, checkpoint name) of a classifier run; `best` falls back to
    the latest checkpoint. A run that is not a classifier is a LyreError that says what it is."""
    run_dir = Path(run_dir)
    if not RunDir(run_dir).config_path.is_file():
        what = "does not exist" if not run_dir.exists() else "is not a run directory (no config.json)"
        raise LyreError(f"{run_dir} {what}")
    config = RunDir(run_dir).read_config()
    classify_section(config, run_dir)
    name = checkpoint
    if not ckpt.checkpoint_exists(run_dir, name):
        name = ckpt.latest_checkpoint(run_dir) if checkpoint == "best" else None
        if name is None:
            raise LyreError(f"no checkpoint {checkpoint!r} in {run_dir}; train it first")
    config.model.dropout = 0.0
    base_dir, base_checkpoint = None, ""
    if "lora" in config.extras:
        ft = config.extras["finetune"]
        base_dir, base_checkpoint = base_mod.check_base(run_dir, ft), ft.base_checkpoint
    model = build_classifier(config, base_dir=base_dir, base_checkpoint=base_checkpoint)
    ckpt.load_checkpoint(run_dir, name, model=model, map_location="cpu")
    if "lora" in config.extras:
        merge_lora(model.base)  # plain Linear layers again: the same function, faster
    return config, model.to(device).eval().requires_grad_(False), name
