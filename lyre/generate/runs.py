"""Load a trained run: its config, tokenizer and model weights, ready to generate or evaluate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lyre.classify.config import is_classifier
from lyre.core.errors import LyreError
from lyre.finetune.base import load_weights
from lyre.model import build_model
from lyre.run import checkpoint as ckpt
from lyre.run.config import RunConfig, config_from_json
from lyre.run.rundir import RunDir
from lyre.tokenizers import Tokenizer, load_tokenizer


@dataclass
class LoadedRun:
    run_dir: Path
    config: RunConfig
    tokenizer: Tokenizer
    model: nn.Module
    checkpoint: str  # which checkpoint the weights came from
    device: torch.device


def load_run(
    run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "auto", *,
    weights: str = "fp32", for_inference: bool = True,
) -> LoadedRun:
    """The model of RUN_DIR in eval mode; `best` falls back to `last` when absent.

    for_inference: made fast for generation by lyre.generate.speed.prepare_for_inference (on CPU,
    oneDNN-packed Linear weights; `weights` "fp16" or "int8" for faster decoding). False gives
    the model exactly as trained (to export it, inspect it, or train it further)."""
    from lyre.core.devices import resolve_device

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LyreError(f"run directory {run_dir} does not exist")
    config = config_from_json(RunDir(run_dir).config_path)
    if is_classifier(config):  # its head answers labels, not next tokens
        raise LyreError(f"{run_dir} is a classifier: it labels text instead of writing it; use "
                        f"`lyre classify {run_dir} TEXT` (or `lyre serve {run_dir}`)")
    name = checkpoint
    if checkpoint == "best" and not ckpt.checkpoint_exists(run_dir, checkpoint):
        name = ckpt.latest_checkpoint(run_dir)  # e.g. a run stopped before its first eval
        if name is None:
            raise LyreError(f"no checkpoint in {run_dir}; train first with `lyre train`")
    device = resolve_device(str(device))
    config.model.dropout = 0.0
    model = build_model(config.model)
    load_weights(model, run_dir, name, config)  # a LoRA run: its base, its adapters merged in
    tokenizer = load_tokenizer(RunDir(run_dir).tokenizer_dir)
    model = model.to(device).eval()
    if for_inference:
        from lyre.generate.speed import prepare_for_inference

        model = prepare_for_inference(model, weights)
    elif weights != "fp32":
        raise LyreError(f"weights={weights!r} is an inference option; it needs for_inference=True")
    return LoadedRun(run_dir, config, tokenizer, model, name, device)
