"""The run directory: one owner for where everything of a run lives.

    RUN/config.json       the resolved RunConfig (lyre.run.config), optional sections included
    RUN/tokenizer/        the saved tokenizer
    RUN/checkpoints/      last/, best/ (lyre.run.checkpoint)
    RUN/metrics.jsonl     one JSON object per log or evaluation line
    RUN/loss.png          the loss plot
    RUN/data/             tokens prepared from the corpus on first use (kept by --force)
    RUN/tensorboard/      event files, when asked for
    RUN/chat.json         optional: {"chat_template": NAME}, read before config.json's key

Training, fine-tuning, import-hf and every reader go through RunDir, so that a new kind of
output (adapters, a classification head) is added here once.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lyre.core.errors import LyreError
from lyre.core.io import prepare_output_dir, read_json_object, remove_path
from lyre.run import checkpoint as ckpt
from lyre.run.config import RunConfig, config_from_json, save_config

# What a fresh run writes, and what --force clears; data/ stays (reused if it is the same corpus).
OUTPUTS = ("checkpoints", "metrics.jsonl", "loss.png", "config.json", "tokenizer", "tensorboard",
           "chat.json", "wandb")


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def plot_path(self) -> Path:
        return self.path / "loss.png"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    def __str__(self) -> str:
        return str(self.path)

    # ---- what is there -------------------------------------------------------------------

    def holds_run(self) -> bool:
        return self.config_path.exists() or (self.path / ckpt.CHECKPOINTS).exists()

    def latest_checkpoint(self) -> str | None:
        return ckpt.latest_checkpoint(self.path)

    def read_config(self) -> RunConfig:
        if not self.path.is_dir():
            raise LyreError(f"run directory {self.path} does not exist")
        return config_from_json(self.config_path)

    def kind(self) -> str:
        """What the run is: one of lyre.run.config.RUN_KINDS ("lm", "seq2seq", "sft", "dpo",
        "classify"), read from its config.json. The one place that tells runs apart."""
        return self.read_config().kind

    def uses_lora(self) -> bool:
        """Does the run hold LoRA adapters (its weights come from the base it points at)?"""
        return self.read_config().uses_lora

    def write_config(self, config: RunConfig) -> None:
        save_config(config, self.config_path)

    def chat_template(self) -> str | None:
        """The run's chat template name: chat.json's `chat_template`, else config.json's."""
        legacy = self.path / "chat.json"
        if legacy.exists():
            name = read_json_object(legacy).get("chat_template")
            if name is not None:
                if not (isinstance(name, str) and name):
                    raise LyreError(f"{legacy}: chat_template must be a template name; got {name!r}")
                return name
        if self.config_path.exists():
            return self.read_config().chat_template
        return None

    # ---- starting a run ------------------------------------------------------------------

    def start_fresh(self, force: bool) -> None:
        """Refuse to write over another run unless `force`, which clears its outputs first."""
        if self.holds_run() and not force:
            raise LyreError(self._occupied_message())
        prepare_output_dir(self.path, holds_output=self.holds_run(), owned=OUTPUTS, force=force,
                           refusal=self._occupied_message())

    def take_tokenizer(self, source: Path, resume: bool) -> None:
        """Copy the prepared data's tokenizer into the run. A fresh start replaces whatever is
        there: a failed earlier attempt may have left another corpus's tokenizer."""
        if not resume:
            remove_path(self.tokenizer_dir)
        if not self.tokenizer_dir.exists():
            shutil.copytree(source, self.tokenizer_dir)

    def restart_command(self) -> str:
        """The command that starts this run again from its saved config."""
        return f"lyre train --config {self.config_path} --out {self.path} --force"

    def _occupied_message(self) -> str:
        if self.latest_checkpoint() is None and self.config_path.exists():
            return (f"{self.path} holds a run that saved no checkpoint yet (it stopped before its "
                    f"first save); start it again with `{self.restart_command()}`")
        return f"{self.path} already holds a run; use --resume to continue it or --force to overwrite it"

    def no_checkpoint_message(self) -> str:
        """Why --resume cannot continue this run, and what to run instead."""
        if self.config_path.exists():
            return (f"{self.path} holds no checkpoint yet (the run stopped before its first save); "
                    f"start it again with `{self.restart_command()}`")
        return f"no checkpoint in {self.path} to resume from; train first with `lyre train`"
