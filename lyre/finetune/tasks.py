"""The fine-tuning tasks `lyre finetune --task NAME` chooses from: one small table.

A task says how to read its data file, how to turn records into what its trainer task draws
(token sequences with a loss mask, preference pairs, ...), which trainer task (lyre.tasks)
learns from them, and the training defaults that suit it. Everything else (the base model,
LoRA, splits, the run directory, resume, the Trainer itself) is shared, in lyre.finetune.

Adding a task (say `classify`): write its trainer task in lyre/tasks/, then
`register_task(FinetuneTask("classify", ...))`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lyre.errors import LyreError
from lyre.finetune import encode as enc
from lyre.finetune import records as rec


@dataclass(frozen=True)
class FinetuneTask:
    name: str
    description: str
    # path -> (records, problems): the records must have .to_json() and .where
    read: Callable[[Path], tuple[list, rec.Problems]]
    # (records, template, tokenizer, block_size, what) -> (items to train on, EncodeReport)
    encode: Callable[..., tuple[list, enc.EncodeReport]]
    # (prepared, autocast) -> a lyre.tasks Task
    make: Callable[[Any, Any], Any]
    train_defaults: dict[str, Any] = field(default_factory=dict)  # [train] values it starts from
    lora_defaults: dict[str, Any] = field(default_factory=dict)  # ...and these with LoRA on
    responses: bool = True  # answer the test split's prompts at the end (responses.json)
    reference: bool = False  # needs the base model beside the trained one (DPO's reference)


def _make_sft(prepared, autocast):
    from lyre.tasks.sft import SFTTask

    return SFTTask(prepared, autocast)


def _make_dpo(prepared, autocast):
    from lyre.tasks.dpo import DPOTask

    return DPOTask(prepared, autocast)


TASKS: dict[str, FinetuneTask] = {}


def register_task(task: FinetuneTask) -> FinetuneTask:
    TASKS[task.name] = task
    return task


def get_task(name: str) -> FinetuneTask:
    if name not in TASKS:
        raise LyreError(f"unknown fine-tuning task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


register_task(FinetuneTask(
    "sft", "supervised fine-tuning on instruction or chat data: learn to write the answers",
    read=lambda path: rec.read_records(path, preference=False),
    encode=enc.encode_all,
    make=_make_sft,
    # Middle-of-the-road learning rates: GPT-2-sized bases take 1e-4..3e-4 well, small models
    # trained here want 1e-3..3e-3 (docs/finetune.md has the sweep): --set lr=... to change.
    train_defaults={"batch_size": 8, "lr": 3e-4, "min_lr": 3e-5, "weight_decay": 0.1},
    lora_defaults={"lr": 1e-3, "min_lr": 1e-4, "weight_decay": 0.0},
))
register_task(FinetuneTask(
    "dpo", "direct preference optimisation on prompt / chosen / rejected data",
    read=lambda path: rec.read_records(path, preference=True),
    encode=enc.encode_all,
    make=_make_dpo,
    train_defaults={"batch_size": 4, "lr": 5e-6, "min_lr": 5e-7, "weight_decay": 0.0},
    lora_defaults={"lr": 5e-4, "min_lr": 5e-5},
    reference=True,
))
