"""The fine-tuning tasks `lyre finetune --task NAME` chooses from: one small table.

A task says how to read its data file, how to turn records into what its trainer task draws
(token sequences with a loss mask, preference pairs, ...), which trainer task (lyre.train.tasks)
learns from them, and the training defaults that suit it. Everything else (the base model,
LoRA, splits, the run directory, resume, the Trainer itself, the driver lyre.finetune.command)
is shared, in lyre.finetune.

A task that needs more (classification: its own data format, head and report) brings its own
hooks: `prepare` (instead of lyre.finetune.prepare.prepare), `finish` (what happens once
training ends, instead of answering the test split) and `summary` (the CLI's last line). It
lives in its own package, which depends on this one, never the reverse: PROVIDED names the
module attribute that holds it ("module:NAME"), imported the first time the task is asked for.
A plug-in adds itself with `register_task(FinetuneTask(...))`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lyre.core.errors import LyreError
from lyre.finetune import encode as enc
from lyre.finetune import records as rec


@dataclass(frozen=True)
class FinetuneTask:
    name: str
    description: str
    # (prepared, autocast) -> a lyre.train.tasks Task
    make: Callable[[Any, Any], Any]
    # The generative pipeline's (lyre.finetune.prepare) data hooks:
    # path -> (records, problems): the records must have .to_json() and .where
    read: Callable[[Path], tuple[list, rec.Problems]] | None = None
    # (records, template, tokenizer, block_size, what) -> (items to train on, EncodeReport)
    encode: Callable[..., tuple[list, enc.EncodeReport]] | None = None
    train_defaults: dict[str, Any] = field(default_factory=dict)  # [train] values it starts from
    lora_defaults: dict[str, Any] = field(default_factory=dict)  # ...and these with LoRA on
    responses: bool = True  # answer the test split's prompts at the end (responses.json)
    reference: bool = False  # needs the base model beside the trained one (DPO's reference)
    # An epoch is this many full batches when the task's order drops the last partial batch
    # (lyre.train.tasks.epochs.EpochOrder(drop_last=True)), else rounded up: finetune.prepare.steps_per_epoch.
    drop_last: bool = False
    # Hooks of a task with its own pipeline pieces (None: the generative ones of lyre.finetune):
    # prepare(base=, data=, out=, template=, lora_rank=, overrides=, resume=, scratch=) -> prepared
    prepare: Callable[..., Any] | None = None
    # finish(result, quiet, plot): once training ended (not stopped on request), on rank 0
    finish: Callable[[Any, bool, bool], None] | None = None
    # summary(result) -> the CLI's last line
    summary: Callable[[Any], str] | None = None


def _make_sft(prepared, autocast):
    from lyre.finetune.sft import SFTTask

    return SFTTask(prepared, autocast)


def _make_dpo(prepared, autocast):
    from lyre.finetune.dpo import DPOTask

    return DPOTask(prepared, autocast)


TASKS: dict[str, FinetuneTask] = {}
# Tasks defined in their own packages ("module:attribute"), loaded when first asked for.
PROVIDED: dict[str, str] = {"classify": "lyre.classify.task:FINETUNE_TASK"}


def register_task(task: FinetuneTask) -> FinetuneTask:
    TASKS[task.name] = task
    return task


def task_names() -> list[str]:
    return [*TASKS, *(name for name in PROVIDED if name not in TASKS)]


def get_task(name: str) -> FinetuneTask:
    if name not in TASKS and name in PROVIDED:
        module, _, attribute = PROVIDED[name].partition(":")
        register_task(getattr(importlib.import_module(module), attribute))
    if name not in TASKS:
        import difflib

        close = difflib.get_close_matches(name, task_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LyreError(f"unknown fine-tuning task {name!r}{hint}; known: {', '.join(task_names())}")
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
