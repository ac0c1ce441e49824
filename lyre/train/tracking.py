"""What a training run tells the world: the terminal, metrics.jsonl, TensorBoard, W&B.

ProgressLog is for people. On a terminal it draws a tqdm bar with the latest loss; when the
output is a file or a pipe (or with --no-progress) it prints one plain line per log interval,
`step 10 | loss 3.4100 | lr 1.00e-03 | 1.2M tokens | 12,400 tok/s | 52 ms` (then `mfu 41.3%` where
the GPU's peak is known, lyre.train.mfu), because carriage-return bars turn a
log file into one long line.

Tracker is for machines: every record goes to RUN_DIR/metrics.jsonl (what `lyre plot` reads)
and, when asked for, to TensorBoard event files and Weights & Biases (offline unless WANDB_MODE
says otherwise: it must work without a network). Only rank 0 of a distributed run writes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from tqdm.auto import tqdm

from lyre.core.errors import LyreError
from lyre.core.io import atomic_write_text


class ProgressLog:
    def __init__(self, enabled: bool, *, quiet: bool = False, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet  # not rank 0: say nothing
        self.enabled = enabled  # a bar, if the terminal allows one
        self.bar: tqdm | None = None

    def start(self, total: int, initial: int) -> None:
        if self.enabled and not self.quiet and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="train")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def step(self, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            shown = {"mfu": f"{record['mfu']:.1%}"} if "mfu" in record else {}
            # refresh=False: the bar redraws at its own pace (mininterval), not on every log step.
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}",
                                 refresh=False, **shown)
            return
        parts = [f"step {record['step']}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.2e}"]
        if record.get("tokens") is not None:
            parts.append(f"{count(record['tokens'])} tokens")
        parts += [f"{record['tokens_per_s']:,.0f} tok/s", f"{record['ms_per_step']:.0f} ms"]
        if "mfu" in record:
            parts.append(f"mfu {record['mfu']:.1%}")
        self.write(" | ".join(parts))

    def evaluation(self, record: dict[str, Any]) -> None:
        shown = [f"{k.removesuffix('_loss')} {v:.4f}" for k, v in record.items()
                 if k.endswith("_loss") and isinstance(v, float)]
        shown += [f"{k} {v:.4f}" for k, v in record.items()
                  if k.endswith(("_accuracy", "_acc")) and isinstance(v, float)]
        self.write(f"step {record['step']}: " + ", ".join(shown))

    def write(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def count(n: int) -> str:
    """1234 -> "1,234"; 4_915_200 -> "4.92M"; 9.8e9 -> "9.83B": short enough for a log line."""
    for size, suffix in ((1e9, "B"), (1e6, "M")):
        if n >= size:
            return f"{n / size:.3g}{suffix}" if n < 1000 * size else f"{n / size:,.0f}{suffix}"
    return f"{n:,}"


class Tracker:
    def __init__(self, run, train_config, config_dict: dict[str, Any], *, enabled: bool) -> None:
        self.run, self.enabled = run, enabled
        self.history: list[dict] = []
        self._tensorboard = self._wandb = None
        if not enabled:
            return
        if train_config.tensorboard:
            self._tensorboard = _open_tensorboard(run.tensorboard_dir)
        if train_config.wandb:
            self._wandb = _open_wandb(run, train_config.wandb_project, config_dict)

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.enabled:
            return
        with self.run.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(key, value, record["step"])
            self._tensorboard.flush()
        if self._wandb is not None:
            self._wandb.log(numbers, step=record["step"])

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    @staticmethod
    def trim(run, step: int) -> None:
        """Forget records logged after the checkpoint a run resumes from.

        A killed run may have logged steps it never saved; they are about to be trained again,
        and keeping both copies would draw the loss curve twice over those steps.
        """
        path = run.metrics_path
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line + "\n")
        atomic_write_text(path, "".join(kept))


def _open_tensorboard(directory):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise LyreError("train.tensorboard needs the tensorboard package: "
                        "pip install 'lyre[tracking]' (or pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(directory))


def _open_wandb(run, project: str, config_dict: dict[str, Any]):
    try:
        import wandb
    except ImportError:
        raise LyreError("train.wandb needs the wandb package: pip install 'lyre[tracking]' "
                        "(or pip install wandb)") from None
    mode = os.environ.get("WANDB_MODE", "offline")  # no network unless the user asks for it
    return wandb.init(project=project, name=run.path.name, dir=str(run.path), config=config_dict,
                      mode=mode, resume="allow")
