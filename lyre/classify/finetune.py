"""Fine-tune a classifier: `lyre finetune BASE --task classify --data FILE --out RUN`.

    1. the run config: the base run's model, classification training defaults (the book's:
       batch 8, AdamW lr 5e-5 constant, weight decay 0.1, 5 epochs), the [classify] section,
       then the --set overrides
    2. train on the one Trainer with lyre.tasks.classify (data, splits, head, metrics)
    3. load the best checkpoint (highest val accuracy), score train, val and test: accuracy,
       per-class precision / recall / F1 and confusion matrices, printed as tables and saved in
       RUN/classification.json; RUN/classify.png plots loss and accuracy per epoch
"""

from __future__ import annotations

import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lyre.classify.build import load_classifier_model, read_base_config
from lyre.classify.config import ClassifyConfig, classify_section
from lyre.classify.data import read_split
from lyre.classify.encode import encode_examples, token_limit
from lyre.classify.metrics import classification_report, format_report
from lyre.classify.model import score
from lyre.config import (
    OPTIONAL_SECTIONS,
    DataConfig,
    RunConfig,
    TrainConfig,
    _coerce,
    _parse_override,
    _resolve_key,
    section_classes,
)
from lyre.errors import LyreError
from lyre.io import write_json
from lyre.rundir import RunDir
from lyre.tasks.classify import SPLITS, ClassificationTask
from lyre.tokenizers import load_tokenizer
from lyre.train import train

REPORT_FILE = "classification.json"
PLOT_FILE = "classify.png"


def classification_train_config() -> TrainConfig:
    """The book's chapter 6 recipe; max_iters and eval_interval follow the data (per epoch)."""
    return TrainConfig(batch_size=8, lr=5e-5, min_lr=5e-5, warmup_iters=0, weight_decay=0.1,
                       eval_interval=1, log_interval=10, final_eval=False)


def apply_overrides(config: RunConfig, overrides: list[str]) -> tuple[RunConfig, set[str]]:
    """`config` with `--set key=value` applied; also returns the fields set ("train.lr", ...)."""
    raw = config.to_dict()
    sections = {**section_classes(raw), **{n: c for n, c in OPTIONAL_SECTIONS.items() if n in raw}}
    touched = set()
    for item in overrides:
        key, value = _parse_override(item)
        section, name = _resolve_key(key, sections)
        hint = typing.get_type_hints(sections[section])[name]
        raw[section][name] = _coerce(value, hint, f"--set {key}")
        touched.add(f"{section}.{name}")
    return RunConfig.from_dict(raw, source="--set"), touched


def classifier_config(base: str | Path, data: str | Path, overrides: list[str] | None = None,
                      lora_rank: int = 0) -> tuple[RunConfig, set[str]]:
    """The config of a new classifier run on `base` and `data`, overrides applied."""
    base_config = read_base_config(base)
    model = base_config.model
    model.dropout = 0.0  # the book fine-tunes without dropout; --set model.dropout=0.1 to change
    section = ClassifyConfig(data=str(data), base=str(base))
    extras: dict[str, Any] = {"classify": section}
    if lora_rank:
        from lyre.lora import LoRAConfig

        extras["lora"] = LoRAConfig(rank=lora_rank, alpha=float(2 * lora_rank))
        section.trainable = "lora"
    config = RunConfig(model=model, data=DataConfig(corpus=[], tokenizer=base_config.data.tokenizer),
                       train=classification_train_config(), extras=extras)
    config.train.init_from = str(base)
    config, touched = apply_overrides(config, list(overrides or []))
    section = classify_section(config)
    section.validate()
    if section.trainable == "lora" and "lora" not in config.extras:
        raise LyreError("classify.trainable=lora needs adapters: pass --lora-rank R")
    return config, touched


@dataclass
class ClassifyResult:
    run_dir: Path
    step: int
    best_val_accuracy: float
    report: dict[str, Any] = field(default_factory=dict)  # per split: classification_report
    seconds: float = 0.0  # training wall time

    def test_accuracy(self) -> float | None:
        test = self.report.get("test")
        return test["accuracy"] if test else None


def finetune_classifier(base: str | Path | None, data: str | Path | None, out: str | Path, *,
                        overrides: list[str] | None = None, lora_rank: int = 0,
                        resume: bool = False, force: bool = False,
                        progress: bool = True, verbose: bool = True) -> ClassifyResult:
    """Train a classifier on `data` from the language model in `base` into run `out`.

    resume=True continues `out` from its last checkpoint (base and data come from the run).
    """
    out = Path(out)
    if resume:
        config, touched = apply_overrides(RunDir(out).read_config(), list(overrides or []))
        classify_section(config, out)
        task = ClassificationTask(steps_from_epochs=False, eval_each_epoch=False, verbose=verbose)
    else:
        if base is None or data is None:
            raise LyreError("a new classifier needs BASE and --data FILE")
        config, touched = classifier_config(base, data, overrides, lora_rank)
        task = ClassificationTask(steps_from_epochs="train.max_iters" not in touched,
                                  eval_each_epoch="train.eval_interval" not in touched,
                                  verbose=verbose)
    started = time.perf_counter()
    result = train(config, out, resume=resume, force=force, progress=progress, task=task)
    seconds = time.perf_counter() - started
    report: dict[str, Any] = {}
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        report = evaluate_classifier(out)
        write_json(out / REPORT_FILE, report)
        if verbose:
            print(format_reports(report))
        from lyre.classify.plot import plot_classifier

        plot_classifier(out)
    return ClassifyResult(out, result.step, result.best_val_loss, report, seconds)


def evaluate_classifier(run_dir: str | Path, checkpoint: str = "best",
                        splits: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """Metrics of a classifier run's checkpoint on its own splits (RUN/data/*.jsonl)."""
    run = RunDir(run_dir)
    config, model, name = load_classifier_model(run.path, checkpoint)
    cfg = config.extras["classify"]
    tokenizer = load_tokenizer(run.tokenizer_dir)
    limit = token_limit(cfg.max_length, config.model.block_size)
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
