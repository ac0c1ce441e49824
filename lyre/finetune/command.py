"""`lyre finetune BASE --data FILE --out RUN`: prepare, train on the one Trainer, answer the test split.

    finetune(base, data, out, task="sft" | "dpo", template=None, lora_rank=None, overrides=[...])
    finetune(out=RUN, resume=True)       continue a stopped run exactly where it stopped

Preparation (lyre.finetune.prepare) checks everything before the run directory is touched.
Training is lyre.train.train with the task's trainer task, so checkpoints, exact resume,
metrics.jsonl, the loss plot, progress bars, Ctrl-C/SIGTERM and torchrun behave as in
pretraining. At the end, on rank 0: what was trained (trainable parameters, for LoRA the
adapter's size), and the answers to the test split in RUN/responses.json.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from lyre import checkpoint as ckpt
from lyre.devices import autocast_context, resolve_device
from lyre.errors import LyreError
from lyre.finetune.prepare import Prepared, prepare
from lyre.finetune.responses import RESPONSES_FILE, generate_responses, write_responses
from lyre.io import make_temp_dir
from lyre.rundir import RunDir
from lyre.train import TrainResult, train


@dataclass
class FinetuneResult:
    run_dir: Path
    train: TrainResult
    prepared: Prepared
    adapter_bytes: int | None = None  # LoRA: the size of one checkpoint's weights file
    responses: Path | None = None


def _say(line: str, quiet: bool) -> None:
    if not quiet:
        print(line, file=sys.stderr, flush=True)


def finetune(base: str | Path | None = None, data: str | Path | None = None,
             out: str | Path = "runs/finetune", *, task: str | None = None,
             template: str | None = None, lora_rank: int | None = None,
             overrides: list[str] | None = None, resume: bool = False, force: bool = False,
             progress: bool = True, plot: bool = True, quiet: bool = False,
             stop_at: int | None = None) -> FinetuneResult:
    """Fine-tune BASE (a lyre run or a Hugging Face directory) on DATA into OUT; see the module.

    `stop_at` ends the run at that step with a checkpoint, as if it had been stopped there."""
    import os

    out = Path(out)
    main = os.environ.get("RANK", "0") == "0"
    quiet = quiet or not main
    if resume and not (out / "config.json").is_file():
        raise LyreError(f"no fine-tuning run in {out} to resume (no config.json)")
    if not resume and not force and RunDir(out).holds_run():  # before the data is even read
        raise LyreError(f"{out} already holds a run; use --resume to continue it or --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = make_temp_dir(out.parent, f".{out.name}.finetune-")
    try:
        prepared = prepare(base=base, data=data, out=out, task=task, template=template,
                           lora_rank=lora_rank, overrides=overrides, resume=resume, scratch=scratch)
        for note in prepared.notes:
            _say(note, quiet)
        cfg = prepared.config.train
        trainer_task = prepared.task.make(prepared, autocast_context(resolve_device(cfg.device), cfg.dtype))
        prepared.report = lambda line: _say(line, quiet)  # what is trained, once it is built
        result = train(prepared.config, out, resume=resume, force=force, progress=progress,
                       plot=plot, task=trainer_task, stop_at=stop_at)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    done = FinetuneResult(out, result, prepared)
    if not main:
        return done
    if result.stopped_early:
        _say(f"stopped early at step {result.step}: {result.stopped_early}", quiet)
    if prepared.lora is not None:
        name = ckpt.latest_checkpoint(out) or "last"
        done.adapter_bytes = (out / ckpt.CHECKPOINTS / name / ckpt.MODEL_FILE).stat().st_size
        _say(f"adapter: {done.adapter_bytes / 1e6:.2f} MB per checkpoint "
             f"({out / ckpt.CHECKPOINTS}/*/{ckpt.MODEL_FILE}); the base stays in "
             f"{prepared.finetune.base}", quiet)
    ft = prepared.finetune
    finished = result.step >= prepared.config.train.max_iters or result.stopped_early
    if finished and ft.responses and prepared.task.responses and prepared.splits.test:
        done.responses = answer_test_split(out, records=prepared.splits.test, quiet=quiet)
    return done


def answer_test_split(out: str | Path, *, records: list | None = None, quiet: bool = False) -> Path:
    """Answer the run's test split (or `records`) with its best checkpoint: RUN/responses.json."""
    from lyre.chat import get_template, template_name_for_run
    from lyre.finetune.tasks import get_task
    from lyre.runs import load_run

    out = Path(out)
    run = load_run(out, "best", "auto")
    ft = run.config.extras["finetune"]
    if records is None:
        path = out / "data" / "test.jsonl"
        records = get_task(ft.task).read(path)[0] if path.is_file() and path.stat().st_size else []
    template = get_template(template_name_for_run(out))
    _say(f"answering the {len(records)} test prompt(s) ...", quiet)
    entries = generate_responses(run, template, records, max_new_tokens=ft.response_tokens)
    path = out / RESPONSES_FILE
    stopped = sum(e["stopped"] for e in entries)
    write_responses(path, entries, {"run": str(out), "checkpoint": run.checkpoint,
                                    "template": template.name, "stopped": stopped,
                                    "count": len(entries)})
    _say(f"wrote {path}: {len(entries)} answers, {stopped} ended by the model itself "
         f"(<|endoftext|>); score them with `lyre judge {out} --base-url URL --model NAME`", quiet)
    return path
