"""Fine-tune a classifier: `lyre finetune BASE --task classify --data FILE --out RUN`.

The driver is lyre.finetune.command's, with classification's hooks (lyre.classify.task):

    1. the run config: the base run's model, classification training defaults (batch 8,
       AdamW lr 3e-4 cosine, weight decay 0.1, 5 epochs; lyre.classify.prepare), the [classify]
       section (every weight trains, crop augmentation),
       then the --set overrides
    2. train on the one Trainer with lyre.classify.task (data, splits, head, metrics)
    3. load the best checkpoint (highest val accuracy), score train, val and test: accuracy,
       per-class precision / recall / F1 and confusion matrices, printed as tables and saved in
       RUN/classification.json; RUN/classify.png plots loss and accuracy per epoch
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lyre.classify.build import load_classifier_model
from lyre.classify.data import read_split
from lyre.classify.encode import encode_examples, run_token_limit
from lyre.classify.metrics import classification_report, format_report
from lyre.classify.model import score
from lyre.classify.prepare import SPLITS
from lyre.finetune.command import FinetuneResult, finetune
from lyre.run.rundir import RunDir
from lyre.tokenizers import load_tokenizer

REPORT_FILE = "classification.json"


def finetune_classifier(base: str | Path | None = None, data: str | Path | None = None,
                        out: str | Path = "runs/classify", *, lora_rank: int | None = None,
                        overrides: list[str] | None = None, resume: bool = False,
                        force: bool = False, progress: bool = True, plot: bool = True,
                        quiet: bool = False, stop_at: int | None = None) -> FinetuneResult:
    """Train a classifier on DATA from the language model BASE (a lyre run or a Hugging Face
    directory) into run OUT; resume=True continues OUT where it stopped (see the module).
    `stop_at` ends the run at that step, with a checkpoint and no report, as if killed there.

    The same as `lyre.finetune.command.finetune(..., task="classify")`: the one driver. The
    result's `report` holds the metrics per split (empty until the run has finished)."""
    return finetune(base, data, out, task="classify", lora_rank=lora_rank, overrides=overrides,
                    resume=resume, force=force, progress=progress, plot=plot, quiet=quiet,
                    stop_at=stop_at)


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
