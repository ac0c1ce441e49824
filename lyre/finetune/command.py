"""`lyre finetune BASE --data FILE --out RUN`: prepare, train on the one Trainer, answer the test split.

    finetune(base, data, out, task="sft" | "dpo" | "classify", template=None, lora_rank=None,
             overrides=[...])
    finetune(out=RUN, resume=True)       continue a stopped run exactly where it stopped

The one driver of every fine-tuning task (lyre.finetune.tasks). Preparation (lyre.finetune.prepare,
or the task's own `prepare` hook) checks everything before the run directory is touched.
Training is lyre.train.trainer.train with the task's trainer task, so checkpoints, exact resume,
metrics.jsonl, the loss plot, progress bars, Ctrl-C/SIGTERM and torchrun behave as in
pretraining. At the end, on rank 0: what was trained (trainable parameters, for LoRA the
adapter's size), then the task's `finish` hook (a classifier's report and plot), by default
the answers to the test split in RUN/responses.json. That end's work runs on the run's
train.threads, as the training loop did (`run_threads`).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lyre.core.devices import autocast_context, resolve_device
from lyre.core.errors import LyreError
from lyre.core.io import make_temp_dir
from lyre.core.ranks import is_main_process
from lyre.finetune.base import base_dir_of
from lyre.finetune.prepare import prepare
from lyre.finetune.responses import RESPONSES_FILE, generate_responses, write_responses
from lyre.finetune.tasks import FinetuneTask, get_task
from lyre.run import checkpoint as ckpt
from lyre.run.config import RunConfig
from lyre.run.rundir import RunDir
from lyre.train.trainer import TrainResult, train


@dataclass
class FinetuneResult:
    run_dir: Path
    train: TrainResult
    prepared: Any  # lyre.finetune.prepare.Prepared, or the task's own (classification's)
    task: FinetuneTask | None = None
    adapter_bytes: int | None = None  # LoRA: the size of one checkpoint's weights file
    responses: Path | None = None
    report: dict[str, Any] = field(default_factory=dict)  # the task's final report, if it makes one
    seconds: float = 0.0  # wall time of the training loop (set-up and the end's work excluded)

    def summary(self) -> str:
        """The last line `lyre finetune` prints."""
        if self.task is not None and self.task.summary is not None:
            return self.task.summary(self)
        r = self.train
        val = f"{r.val_loss:.4f}" if r.val_loss is not None else "n/a"
        return (f"done: step {r.step}, val loss {val}, best {r.metric_name} {r.best_metric:.4f}, run in "
                f"{self.run_dir}; talk to it with `lyre chat {self.run_dir}`")


def say(line: str, quiet: bool = False) -> None:
    """A progress line of fine-tuning, on stderr (stdout keeps the results)."""
    if not quiet:
        print(line, file=sys.stderr, flush=True)


def task_of(out: Path, task: str | None, resume: bool) -> FinetuneTask:
    """The task a run trains: --task (sft by default), or the run's own when resuming."""
    if not resume:
        return get_task(task or "sft")
    if not RunDir(out).config_path.is_file():
        raise LyreError(f"no fine-tuning run in {out} to resume (no config.json)")
    kind = RunDir(out).kind()
    if kind in ("lm", "seq2seq"):
        raise LyreError(f"{out} is not a fine-tuning run; continue it with `lyre train --resume {out}`")
    if task not in (None, kind):
        raise LyreError(f"{out} was fine-tuned with --task {kind}; drop --task {task} to resume it")
    return get_task(kind)


def _prepare(spec: FinetuneTask, scratch: Path, **kwargs: Any) -> Any:
    if spec.prepare is not None:  # the task's own preparation (its data, config and head)
        return spec.prepare(scratch=scratch, **kwargs)
    return prepare(task=spec.name, scratch=scratch, **kwargs)


def finetune_config(base: str | Path | None = None, data: str | Path | None = None,
                    out: str | Path = "runs/finetune", *, task: str | None = None,
                    template: str | None = None, lora_rank: int | None = None,
                    overrides: list[str] | None = None, resume: bool = False,
                    force: bool = False) -> RunConfig:
    """The config the run would train with, every check of `finetune` done, nothing written
    (`--nproc` checks it before it starts the processes)."""
    out = Path(out)
    spec = _check_out(out, task, resume, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = make_temp_dir(out.parent, f".{out.name}.finetune-")
    try:
        return _prepare(spec, scratch, base=base, data=data, out=out, template=template,
                        lora_rank=lora_rank, overrides=overrides, resume=resume).config
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_out(out: Path, task: str | None, resume: bool, force: bool) -> FinetuneTask:
    spec = task_of(out, task, resume)
    if not resume and not force and RunDir(out).holds_run():  # before the data is even read
        raise LyreError(f"{out} already holds a run; use --resume to continue it or --force to overwrite it")
    return spec


def finetune(base: str | Path | None = None, data: str | Path | None = None,
             out: str | Path = "runs/finetune", *, task: str | None = None,
             template: str | None = None, lora_rank: int | None = None,
             overrides: list[str] | None = None, resume: bool = False, force: bool = False,
             progress: bool = True, plot: bool = True, quiet: bool = False,
             stop_at: int | None = None) -> FinetuneResult:
    """Fine-tune BASE (a lyre run or a Hugging Face directory) on DATA into OUT with the
    fine-tuning task TASK (sft, dpo, classify: lyre.finetune.tasks); see the module.

    `stop_at` ends the run at that step with a checkpoint, as if it had been stopped there."""
    out = Path(out)
    main = is_main_process()
    quiet = quiet or not main
    spec = _check_out(out, task, resume, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = make_temp_dir(out.parent, f".{out.name}.finetune-")
    try:
        prepared = _prepare(spec, scratch, base=base, data=data, out=out, template=template,
                            lora_rank=lora_rank, overrides=overrides, resume=resume)
        for note in prepared.notes:
            say(note, quiet)
        cfg = prepared.config.train
        prepared.report = lambda line: say(line, quiet)  # what is trained, once it is built
        trainer_task = spec.make(prepared, autocast_context(resolve_device(cfg.device), cfg.dtype))
        started = time.perf_counter()
        result = train(prepared.config, out, resume=resume, force=force, progress=progress,
                       plot=plot, task=trainer_task, stop_at=stop_at)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    done = FinetuneResult(out, result, prepared, spec, seconds=seconds)
    if not main:
        return done
    if result.stopped_early:
        say(f"stopped early at step {result.step}: {result.stopped_early}", quiet)
    if "lora" in prepared.config.extras:
        name = ckpt.latest_checkpoint(out) or "last"
        done.adapter_bytes = (out / ckpt.CHECKPOINTS / name / ckpt.MODEL_FILE).stat().st_size
        ft = prepared.config.extras["finetune"]
        size = done.adapter_bytes
        shown = f"{size / 1e6:.2f} MB" if size >= 100_000 else f"{size / 1e3:.1f} KB"
        say(f"adapter: {shown} per checkpoint "
            f"({out / ckpt.CHECKPOINTS}/*/{ckpt.MODEL_FILE}); the base's weights are read from "
            f"{base_dir_of(out, ft)} (checkpoint {ft.base_checkpoint}): keep it there", quiet)
    if result.step < prepared.config.train.max_iters and not result.stopped_early:
        return done  # stopped on request (stop_at): no best model to report on yet
    with run_threads(prepared.config.train.threads):
        if spec.finish is not None:
            spec.finish(done, quiet, plot)
        elif prepared.finetune.responses and spec.responses and prepared.splits.test:
            done.responses = answer_test_split(out, records=prepared.splits.test, quiet=quiet)
    return done


@contextmanager
def run_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads set to the run's train.threads (0: left as they are) for the work
    after training, as lyre.train.trainer.train sets them for the loop only.

    Without it the classifier's report and the test split's answers ran on torch's default
    (one thread per core) after a run asked for one: on a shared 2-core machine a second
    thread mostly waits for a descheduled peer, and that end took 8-14x longer than on the
    run's one thread (docs/log.md, "19: fine-tuning time").
    """
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def answer_test_split(out: str | Path, *, records: list | None = None, quiet: bool = False) -> Path:
    """Answer the run's test split (or `records`) with its best checkpoint: RUN/responses.json."""
    from lyre.chat.templates import get_template, template_name_for_run
    from lyre.generate.runs import load_run

    out = Path(out)
    run = load_run(out, "best", "auto")
    ft = run.config.extras["finetune"]
    if records is None:
        path = out / "data" / "test.jsonl"
        records = get_task(ft.task).read(path)[0] if path.is_file() and path.stat().st_size else []
    template = get_template(template_name_for_run(out))
    say(f"answering the {len(records)} test prompt(s) ...", quiet)
    entries = generate_responses(run, template, records, max_new_tokens=ft.response_tokens)
    path = out / RESPONSES_FILE
    stopped = sum(e["stopped"] for e in entries)
    write_responses(path, entries, {"run": str(out), "checkpoint": run.checkpoint,
                                    "template": template.name, "stopped": stopped,
                                    "count": len(entries)})
    say(f"wrote {path}: {len(entries)} answers, {stopped} ended by the model itself "
         f"(<|endoftext|>); score them with `lyre judge {out} --base-url URL --model NAME`", quiet)
    return path
