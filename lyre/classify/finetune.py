"""Fine-tune a classifier: `lyre finetune BASE --task classify --data FILE --out RUN`.

    1. the run config: the base run's model, classification training defaults (batch 8,
       AdamW lr 3e-4 cosine, weight decay 0.1, 5 epochs; lyre.classify.prepare), the [classify]
       section (every weight trains, crop augmentation),
       then the --set overrides
    2. train on the one Trainer with lyre.tasks.classify (data, splits, head, metrics)
    3. load the best checkpoint (highest val accuracy), score train, val and test: accuracy,
       per-class precision / recall / F1 and confusion matrices, printed as tables and saved in
       RUN/classification.json; RUN/classify.png plots loss and accuracy per epoch
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lyre.classify.build import load_classifier_model
from lyre.classify.data import read_split
from lyre.classify.encode import encode_examples, run_token_limit
from lyre.classify.metrics import classification_report, format_report
from lyre.classify.model import score
from lyre.classify.prepare import SPLITS, PreparedClassifier, prepare_classifier
from lyre.devices import autocast_context, resolve_device
from lyre.errors import LyreError
from lyre.io import make_temp_dir, write_json
from lyre.rundir import RunDir
from lyre.tasks.classify import ClassificationTask
from lyre.tokenizers import load_tokenizer
from lyre.train import TrainResult, train

REPORT_FILE = "classification.json"


@dataclass
class ClassifyResult:
    run_dir: Path
    train: TrainResult
    prepared: PreparedClassifier
    report: dict[str, Any] = field(default_factory=dict)  # per split: classification_report
    seconds: float = 0.0  # wall time of the training loop (set-up and report excluded)

    @property
    def best_val_accuracy(self) -> float:
        return self.train.best_val_loss  # the trainer's selection metric: val accuracy here

    def accuracy(self, split: str = "test") -> float | None:
        return self.report[split]["accuracy"] if split in self.report else None


def _say(line: str, quiet: bool) -> None:
    if not quiet:
        print(line, file=sys.stderr, flush=True)


def finetune_classifier(base: str | Path | None = None, data: str | Path | None = None,
                        out: str | Path = "runs/classify", *, lora_rank: int | None = None,
                        overrides: list[str] | None = None, resume: bool = False,
                        force: bool = False, progress: bool = True, plot: bool = True,
                        quiet: bool = False, stop_at: int | None = None) -> ClassifyResult:
    """Train a classifier on DATA from the language model BASE (a lyre run or a Hugging Face
    directory) into run OUT; resume=True continues OUT where it stopped (see the module).
    `stop_at` ends the run at that step, with a checkpoint and no report, as if killed there."""
    out = Path(out)
    main = os.environ.get("RANK", "0") == "0"
    quiet = quiet or not main
    if resume and not (out / "config.json").is_file():
        raise LyreError(f"no classifier run in {out} to resume (no config.json)")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = make_temp_dir(out.parent, f".{out.name}.classify-")
    try:
        prepared = prepare_classifier(base=base, data=data, out=out, lora_rank=lora_rank,
                                      overrides=overrides, resume=resume, scratch=scratch)
        for note in prepared.notes:
            _say(f"lyre: {note}", quiet)
        cfg = prepared.config.train
        task = ClassificationTask(prepared, autocast_context(resolve_device(cfg.device), cfg.dtype))
        task.report = lambda line: _say(f"lyre: {line}", quiet)
        started = time.perf_counter()
        result = train(prepared.config, out, resume=resume, force=force, progress=progress,
                       plot=plot, task=task, stop_at=stop_at)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    done = ClassifyResult(out, result, prepared, seconds=seconds)
    if not main or result.step < prepared.config.train.max_iters and not result.stopped_early:
        return done  # stopped on request (stop_at): no best model to report on yet
    if result.stopped_early:
        _say(f"lyre: stopped early at step {result.step}: {result.stopped_early}", quiet)
    done.report = evaluate_classifier(out)
    write_json(out / REPORT_FILE, done.report)
    if not quiet:
        print(format_reports(done.report))
    if plot:
        from lyre.classify.plot import plot_classifier

        plot_classifier(out)
    return done


def evaluate_classifier(run_dir: str | Path, checkpoint: str = "best",
                        splits: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """Metrics of a classifier run's checkpoint on its own splits (RUN/data/*.jsonl): the
    report saved as RUN/classification.json."""
    run = RunDir(run_dir)
    config, model, name = load_classifier_model(run.path, checkpoint)
    cfg = config.extras["classify"]
    tokenizer = load_tokenizer(run.tokenizer_dir)
    limit = run_token_limit(config)
    out: dict[str, Any] = {"checkpoint": name, "labels": cfg.labels}
    for split in splits:
        rows = read_split(run.data_dir / f"{split}.jsonl")
        if not rows:
            continue
        encoded = encode_examples(tokenizer, rows, cfg.labels, limit)
        logits = score(model, encoded.ids, cfg.pad_id, cfg.pad_to)
        labels = torch.tensor(encoded.labels)
        loss = torch.nn.functional.cross_entropy(logits, labels).item()
        out[split] = classification_report(encoded.labels, logits.argmax(-1).tolist(), cfg.labels, loss)
        out[split]["truncated"] = encoded.truncated
    return out


def format_reports(report: dict[str, Any]) -> str:
    parts = [f"checkpoint {report['checkpoint']!r}:"]
    parts += [format_report(report[split], split) for split in SPLITS if split in report]
    return "\n".join(parts)
