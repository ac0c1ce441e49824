"""The base of a fine-tuned run: where its weights come from, and how to load a run's weights.

A full fine-tune holds all its weights in its checkpoints. A LoRA run holds only its adapters
(a few MB) and points at its base in its `[finetune]` section: the base run's directory
(relative paths are relative to the LoRA run: `base` for a Hugging Face model imported into
RUN/base), which checkpoint, and the sha256 that checkpoint's weights had. `load_weights` puts
a run's weights into a model, following that pointer, checking the sha256 (a base that was
retrained or replaced since is an error, not silently different answers), applying the
adapters and merging them in. A base may itself be a LoRA run (DPO after a LoRA SFT run).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch.nn as nn

from lyre.core.errors import LyreError
from lyre.core.io import read_json_object, remove_path
from lyre.finetune.config import FinetuneConfig
from lyre.finetune.lora import apply_lora, checkpoint_adapters_only, merge_lora
from lyre.run import checkpoint as ckpt
from lyre.run.config import RunConfig
from lyre.run.rundir import RunDir

MAX_DEPTH = 8  # base of a base of ...: a loop in the pointers must not recurse forever


def is_lyre_run(path: Path) -> bool:
    return RunDir(path).config_path.is_file() and (path / ckpt.CHECKPOINTS).is_dir()


def is_hf_model_dir(path: Path) -> bool:
    if not (path / "config.json").is_file() or (path / ckpt.CHECKPOINTS).is_dir():
        return False
    try:
        return "model_type" in read_json_object(path / "config.json")
    except LyreError:
        return False


def keep_with_run(converted: Path, run_dir: Path) -> Path:
    """LoRA on a Hugging Face directory: move the base converted from it into RUN_DIR/base, so
    the run (adapters only) keeps the weights it needs. Returns the new path."""
    target = run_dir / "base"
    if target.exists() and not is_lyre_run(target):
        raise LyreError(f"{target} exists and is not a base this command wrote; move it away")
    remove_path(target)
    shutil.move(str(converted), target)
    return target


def pick_checkpoint(run_dir: Path) -> str:
    """`best` when the run has one (the lowest val loss), else its latest."""
    if ckpt.checkpoint_exists(run_dir, "best"):
        return "best"
    name = ckpt.latest_checkpoint(run_dir)
    if name is None:
        raise LyreError(f"base {run_dir} holds no checkpoint; train it first")
    return name


def checkpoint_sha256(run_dir: Path, name: str) -> str:
    """The sha256 of a checkpoint's weights, as its state.json recorded them when written."""
    path = Path(run_dir) / ckpt.CHECKPOINTS / name / ckpt.STATE_FILE
    if not path.is_file():
        path = Path(run_dir) / ckpt.CHECKPOINTS / f"{name}.old" / ckpt.STATE_FILE
    try:
        return read_json_object(path)["files"][ckpt.MODEL_FILE]["sha256"]
    except (KeyError, TypeError):
        raise LyreError(f"{path} is not a lyre checkpoint state file; is the base run damaged?") from None


def base_dir_of(run_dir: Path, ft: FinetuneConfig) -> Path:
    path = Path(ft.base)
    return path if path.is_absolute() else Path(run_dir) / path


def check_base(run_dir: Path, ft: FinetuneConfig) -> Path:
    """The base run's directory, after checking it is there and unchanged."""
    base = base_dir_of(run_dir, ft)
    if not ft.base:
        raise LyreError(f"{run_dir}/config.json has LoRA adapters but no [finetune] base to apply them to")
    if not is_lyre_run(base):
        raise LyreError(f"the base of {run_dir}, {base}, is missing or not a lyre run; put it back "
                        f"(or edit finetune.base in {run_dir}/config.json)")
    found = checkpoint_sha256(base, ft.base_checkpoint)
    if ft.base_sha256 and found != ft.base_sha256:
        raise LyreError(
            f"the base {base} (checkpoint {ft.base_checkpoint}) changed since {run_dir} was trained "
            f"on it (sha256 {found[:12]}... != {ft.base_sha256[:12]}...): its adapters were learned "
            "for other weights; restore the base or fine-tune again"
        )
    return base


def load_weights(model: nn.Module, run_dir: str | Path, checkpoint: str,
                 config: RunConfig | None = None, *, merge: bool = True, _depth: int = 0) -> nn.Module:
    """Load checkpoint `checkpoint` of RUN_DIR into `model` (built from the run's model config).

    For a LoRA run: the base's weights (recursively), then the adapters; merged into the weights
    when `merge` (plain Linear layers again), else left as LoRALinear layers.
    """
    run_dir = Path(run_dir)
    config = config or RunDir(run_dir).read_config()
    lora = config.extras.get("lora")
    if lora is None:
        ckpt.load_checkpoint(run_dir, checkpoint, model=model, map_location="cpu")
        return model
    if _depth >= MAX_DEPTH:
        raise LyreError(f"{run_dir}: the chain of LoRA bases is deeper than {MAX_DEPTH}; is it a loop?")
    ft = config.extras.get("finetune") or FinetuneConfig()
    base = check_base(run_dir, ft)
    load_weights(model, base, ft.base_checkpoint, _depth=_depth + 1)
    apply_lora(model, lora)
    checkpoint_adapters_only(model)  # the run's checkpoints hold the adapters alone
    ckpt.load_checkpoint(run_dir, checkpoint, model=model, map_location="cpu")
    return merge_lora(model) if merge else model
