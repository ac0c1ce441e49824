"""Everything a fine-tuning run needs before its first step, checked before anything is written.

`prepare(...)` resolves the base model, reads and splits the data, encodes it through the chat
template, and builds the run's config:

    [model]      the base's (only dropout may change: the weights fix the shape)
    [data]       the base's tokenizer
    [train]      the task's defaults, then --set; max_iters = epochs x steps per epoch unless a
                 smaller --set max_iters caps it; eval_interval, warmup and log_interval scale
                 with the steps unless set
    [finetune]   task, data, split, base pointer (lyre.finetune.config)
    [lora]       when --lora-rank > 0 (lyre.finetune.lora)
    chat_template  the template the data was rendered with: chat and serve use it

The returned `Prepared` writes the run's own files when the Trainer sets the task up (the data
splits as JSONL, the tokenizer, a Hugging Face base imported into RUN/base for LoRA) and builds
the model (base weights, then LoRA adapters or frozen blocks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lyre.chat.templates import ChatTemplate, get_template
from lyre.core.errors import LyreError
from lyre.core.io import remove_path, write_json
from lyre.core.ranks import world_size
from lyre.finetune import base as base_mod
from lyre.finetune.config import FinetuneConfig
from lyre.finetune.encode import record_tools, require_eot
from lyre.finetune.lora import (
    LoRAConfig,
    apply_lora,
    checkpoint_adapters_only,
    count_parameters,
    resolve_targets,
)
from lyre.finetune.records import Splits, split_records, write_records
from lyre.finetune.tasks import FinetuneTask, get_task
from lyre.model import build_model
from lyre.model.gpt import WEIGHTLESS_POSITIONS
from lyre.run import checkpoint as ckpt
from lyre.run.config import RunConfig, TrainConfig, load_config
from lyre.run.rundir import RunDir
from lyre.tokenizers import Tokenizer, load_tokenizer
from lyre.tokenizers.char import replace_unknown, replace_unknown_in
from lyre.train.trainer import check_train_config

DEFAULT_TEMPLATE = "alpaca"
SPLITS = ("train", "val", "test")
OUTPUTS = ("responses.json", "judge.json")  # products of an earlier run, stale after a new one
# Model fields a fine-tune may change: everything else is fixed by the base's weights.
MODEL_FREE = ("dropout", "attn_impl")


@dataclass
class Prepared:
    config: RunConfig
    task: FinetuneTask
    tokenizer: Tokenizer
    tokenizer_dir: Path
    template: ChatTemplate
    splits: Splits
    train: list  # encoded training items (lyre.finetune.encode.Example or Pair)
    val: list
    base_dir: Path | None  # a lyre run holding the base weights (None: resuming a full fine-tune)
    base_checkpoint: str = ""
    resume: bool = False
    hf_base: Path | None = None  # a Hugging Face base imported here, to keep in RUN/base (LoRA)
    notes: list[str] = field(default_factory=list)
    steps_per_epoch: int = 0
    report: Callable[[str], None] = print  # told what is trained once the model is built

    @property
    def finetune(self) -> FinetuneConfig:
        return self.config.extras["finetune"]

    @property
    def lora(self) -> LoRAConfig | None:
        return self.config.extras.get("lora")

    @property
    def pad_id(self) -> int:
        return require_eot(self.tokenizer)  # padding is never a target: any id will do

    # ---- called by the trainer task ------------------------------------------------------

    def write_run_files(self, run: RunDir, resume: bool) -> None:
        """The run's copies of its data splits and tokenizer (and of a Hugging Face base)."""
        if resume:
            return
        for name in OUTPUTS:
            remove_path(run.path / name)
        for name, records in zip(SPLITS, (self.splits.train, self.splits.val, self.splits.test),
                                 strict=True):
            write_records(run.data_dir / f"{name}.jsonl", records)
        write_json(run.data_dir / "meta.json", {"task": self.task.name, "template": self.template.name,
                                                **{name: len(getattr(self.splits, name)) for name in SPLITS}})
        run.take_tokenizer(self.tokenizer_dir, resume=False)
        if self.hf_base is not None:  # LoRA on a Hugging Face directory: keep the base with the run
            self.base_dir = base_mod.keep_with_run(self.base_dir, run.path)

    def build_model(self, config: RunConfig) -> nn.Module:
        """The base's weights, then the adapters (LoRA) or the frozen blocks (full)."""
        model = build_model(config.model)
        lora = config.extras.get("lora")
        if self.base_dir is not None:  # a resumed full fine-tune gets every weight from its checkpoint
            base_mod.load_weights(model, self.base_dir, self.base_checkpoint)
        if lora is not None:
            apply_lora(model, lora)
            checkpoint_adapters_only(model)
        elif self.finetune.unfrozen_blocks:
            freeze_all_but_last(model, self.finetune.unfrozen_blocks)
        self.report(describe_model(model, config))
        return model


def freeze_all_but_last(model: nn.Module, blocks: int) -> None:
    """Train only the last `blocks` transformer blocks and the final norm."""
    layers = getattr(getattr(model, "transformer", None), "h", None)
    if layers is None:
        raise LyreError("finetune.unfrozen_blocks needs a model with transformer blocks (arch=gpt)")
    if blocks > len(layers):
        raise LyreError(f"finetune.unfrozen_blocks = {blocks} but the model has {len(layers)} blocks")
    model.requires_grad_(False)
    for block in list(layers)[-blocks:]:
        block.requires_grad_(True)
    model.transformer.ln_f.requires_grad_(True)


# ----------------------------------------------------------------------------------------------
# The base


@dataclass
class Base:
    source: str  # as the user gave it
    run_dir: Path  # a lyre run with the weights
    checkpoint: str
    sha256: str
    config: RunConfig
    hf: bool = False  # imported from a Hugging Face directory


def resolve_base(source: str | Path, scratch: Path) -> Base:
    """A lyre run directory as it is; a Hugging Face model directory imported into `scratch`."""
    path = Path(source)
    if base_mod.is_lyre_run(path):
        name = base_mod.pick_checkpoint(path)
        config = RunDir(path).read_config()
        ckpt.load_model_state(path, name)  # a truncated or corrupt base fails now, not mid-setup
        if "lora" in config.extras:
            base_mod.check_base(path, config.extras["finetune"])  # say now if its base is gone
        return Base(str(source), path.resolve(), name, base_mod.checkpoint_sha256(path, name), config)
    if base_mod.is_hf_model_dir(path):
        from lyre.hf import import_hf

        run_dir = import_hf(path, scratch / "base")
        return Base(str(source), run_dir, "last", base_mod.checkpoint_sha256(run_dir, "last"),
                    RunDir(run_dir).read_config(), hf=True)
    if not path.exists():
        raise LyreError(f"base {path} not found; BASE is a lyre run directory or a Hugging Face "
                        "model directory")
    raise LyreError(f"base {path} is neither a lyre run directory (config.json + checkpoints/) nor a "
                    "Hugging Face model directory (config.json with model_type)")


# ----------------------------------------------------------------------------------------------
# The config


def _overridden(overrides: list[str], section: str, name: str) -> bool:
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in (name, f"{section}.{name}"):
            return True
    return False


def steps_per_epoch(config: RunConfig, rows: int, *, drop_last: bool) -> int:
    """Optimizer steps per pass over `rows` training items, all processes together. A task
    whose order drops the last partial batch (FinetuneTask.drop_last: classification, as the
    book's DataLoader(drop_last=True)) rounds down; one whose last batch is partial rounds up."""
    cfg = config.train
    check_train_config(cfg)  # batch_size=0 is a message here, not a division by zero
    per_step = cfg.batch_size * cfg.grad_accum * world_size()
    return max(1, rows // per_step) if drop_last else max(1, math.ceil(rows / per_step))


def describe_steps(config: RunConfig, per_epoch: int) -> str:
    """`12 steps per epoch x 2 epoch(s) -> 24 steps`, saying so when train.max_iters caps it."""
    epochs, steps = config.extras["finetune"].epochs, config.train.max_iters
    text = f"{per_epoch:,} steps per epoch x {epochs} epoch(s) -> "
    if steps < per_epoch * epochs:
        return text + f"{steps:,} steps (capped by train.max_iters; {per_epoch * epochs:,} without it)"
    return text + f"{steps:,} steps"


def fresh_config(base: Base, task: FinetuneTask, data: Path, template: str, lora_rank: int,
                 overrides: list[str], scratch: Path, out: Path) -> RunConfig:
    """The run's config: the base's model and tokenizer, the task's defaults, then --set."""
    train = {**TrainConfig().__dict__, "max_iters": 0, **task.train_defaults,
             **(task.lora_defaults if lora_rank else {})}
    raw: dict[str, Any] = {
        "model": base.config.to_dict()["model"],
        "data": base.config.to_dict()["data"],
        "train": train,
        "chat_template": template,
        "finetune": {**FinetuneConfig(task=task.name, data=str(Path(data).resolve())).__dict__,
                     "base": str(base.run_dir), "base_checkpoint": base.checkpoint,
                     "base_sha256": base.sha256, "base_source": str(base.source)},
    }
    if lora_rank:
        raw["lora"] = {**LoRAConfig(rank=lora_rank, alpha=2.0 * lora_rank).__dict__}
    path = scratch / "finetune-config.json"
    write_json(path, raw)
    config = load_config(path, overrides)
    _check_model_unchanged(base.config, config)
    if config.data.tokenizer.startswith("gpt2:"):  # the run's own copy, not the base's
        config.data.tokenizer = f"gpt2:{(out / 'tokenizer').resolve()}"
    return config


def _base_again(ft: FinetuneConfig, scratch: Path) -> tuple[Path, str]:
    """The base of a full fine-tune, found again (a resumed DPO run's reference) and unchanged."""
    source = ft.base if ft.base and base_mod.is_lyre_run(Path(ft.base)) else ft.base_source
    base = resolve_base(source, scratch)
    if base.sha256 != ft.base_sha256:
        raise LyreError(f"the base {source} changed since this run started (its weights' sha256 "
                        "differs), so the DPO reference would not be the same model; restore it")
    return base.run_dir, base.checkpoint


def _check_model_unchanged(base: RunConfig, config: RunConfig) -> None:
    ours, theirs = config.to_dict()["model"], base.to_dict()["model"]
    free = MODEL_FREE
    # A GPT whose positions are not weights may be fine-tuned at a longer context than it was
    # pretrained at: e.g. short pretraining windows, long conversations (docs/calculator.md).
    if theirs.get("arch") == "gpt" and theirs.get("pos") in WEIGHTLESS_POSITIONS:
        free = (*MODEL_FREE, "block_size")
    changed = [k for k in ours if k not in free and ours[k] != theirs.get(k)]
    if changed:
        raise LyreError(f"--set model.{changed[0]}: the model's shape comes from BASE and cannot change "
                        f"when fine-tuning (only {', '.join('model.' + k for k in free)} can)")


def derive_schedule(config: RunConfig, overrides: list[str], steps_per_epoch: int,
                    resume: bool, *, evals_per_epoch: int = 2, scale_warmup: bool = True) -> None:
    """max_iters from the epochs (capped by a --set max_iters), and step-scaled defaults for
    what --set left alone: evaluations per epoch, warmup, log interval. (Classification
    evaluates once per epoch, as the book does, and keeps its own warmup.)"""
    cfg, ft = config.train, config.extras["finetune"]
    budget = ft.epochs * steps_per_epoch
    if resume:
        if _overridden(overrides, "finetune", "epochs") and not _overridden(overrides, "train", "max_iters"):
            cfg.max_iters = budget
        return
    cfg.max_iters = min(cfg.max_iters, budget) if cfg.max_iters else budget
    if not _overridden(overrides, "train", "eval_interval"):
        cfg.eval_interval = max(1, min(steps_per_epoch // evals_per_epoch, cfg.max_iters))
    if scale_warmup and not _overridden(overrides, "train", "warmup_iters"):
        cfg.warmup_iters = min(max(1, cfg.max_iters // 20), 100)
    if not _overridden(overrides, "train", "log_interval"):
        cfg.log_interval = max(1, min(10, cfg.max_iters // 20))


# ----------------------------------------------------------------------------------------------
# Data


def load_splits(task: FinetuneTask, ft: FinetuneConfig, notes: list[str]) -> Splits:
    records, problems = task.read(Path(ft.data))
    if problems.skipped:
        notes.append(problems.summary(ft.data))
    if not (ft.val_data or ft.test_data):
        return split_records(records, ft.val_fraction, ft.test_fraction, ft.split_seed)
    extra = {}
    for name in ("val_data", "test_data"):
        path = getattr(ft, name)
        extra[name] = task.read(Path(path))[0] if path else []
    return Splits(train=records, val=extra["val_data"], test=extra["test_data"])


def _read_run_split(spec: FinetuneTask, path: Path) -> list:
    """A split the run wrote at its start (resume reads its own copy, not the data file)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    records, problems = spec.read(path)
    if problems.skipped:
        raise LyreError(f"{path} is damaged: " + problems.summary(str(path)))
    return records


def encode_splits(task: FinetuneTask, splits: Splits, template: ChatTemplate, tokenizer,
                  limit: int, notes: list[str]) -> tuple[list, list]:
    out, why = [], ""
    for name in ("train", "val"):
        records = getattr(splits, name)
        items, report = task.encode(records, template, tokenizer, limit, name)
        if report.problems is not None and report.problems.skipped:
            notes.append(report.problems.summary(f"the {name} split"))
            why = why or notes[-1]
        if report.truncated:
            notes.append(f"{report.truncated:,} of {len(items):,} {name} sequences were longer than "
                         f"{limit} tokens and were cut at their end")
        out.append(items)
    if not out[0]:
        # The notes are printed only once preparation succeeds: the reason goes in the error.
        raise LyreError(f"no training sequence left after encoding ({why or 'the train split is empty'}); "
                        f"a longer context (model.block_size) or shorter records would keep some")
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------
# Entry point


def prepare(*, base: str | Path | None, data: str | Path | None, out: Path, task: str | None = None,
            template: str | None = None, lora_rank: int | None = None,
            overrides: list[str] | None = None, resume: bool = False, scratch: Path) -> Prepared:
    """Check and assemble everything for a fine-tuning run (see the module docstring).

    `scratch`: a temporary directory on the same filesystem as `out` (a Hugging Face base is
    imported there). Nothing under `out` is written here.
    """
    overrides = list(overrides or [])
    notes: list[str] = []
    if resume:
        config = load_config(RunDir(out).config_path, overrides)
        if "finetune" not in config.extras:
            raise LyreError(f"{out} is not a fine-tuning run; continue it with `lyre train --resume {out}`")
        ft = config.extras["finetune"]
        spec = get_task(ft.task)
        if task not in (None, ft.task):
            raise LyreError(f"{out} was fine-tuned with --task {ft.task}; drop --task {task} to resume it")
        tokenizer_dir = out / "tokenizer"
        base_dir, base_checkpoint = None, ft.base_checkpoint  # a full fine-tune's checkpoint has it all
        if "lora" in config.extras:
            base_dir = base_mod.check_base(out, ft)
        elif spec.reference:  # ...but DPO's frozen reference is the base model itself
            base_dir, base_checkpoint = _base_again(ft, scratch)
        splits = Splits(*(_read_run_split(spec, out / "data" / f"{name}.jsonl") for name in SPLITS))
        hf_base = None
    else:
        if base is None or data is None:
            raise LyreError("lyre finetune needs BASE and --data FILE (or --resume RUN)")
        if lora_rank is not None and lora_rank < 0:
            raise LyreError(f"--lora-rank must be 0 (full fine-tuning) or more; got {lora_rank}")
        spec = get_task(task or "sft")
        resolved = resolve_base(base, scratch)
        tokenizer_dir = resolved.run_dir / "tokenizer"
        name = template or _base_template(resolved.config) or _default_template(resolved, notes)
        get_template(name)  # an unknown name fails before the data is read
        config = fresh_config(resolved, spec, Path(data), name, lora_rank or 0, overrides, scratch, out)
        ft = config.extras["finetune"]
        ft.validate()
        if "lora" in config.extras:
            config.extras["lora"].validate()
            if resolved.hf:  # the LoRA run keeps its base: RUN/base (written at setup)
                ft.base = "base"
        elif resolved.hf:  # imported into scratch only for its weights: nothing to point at
            ft.base = ""
        splits = load_splits(spec, ft, notes)
        base_dir, base_checkpoint = resolved.run_dir, resolved.checkpoint
        hf_base = resolved.run_dir if resolved.hf and "lora" in config.extras else None
    ft.validate()
    tokenizer = load_tokenizer(tokenizer_dir)
    require_eot(tokenizer)
    template_ = get_template(config.chat_template or DEFAULT_TEMPLATE)
    if not resume and (note := replace_unknown_in(tokenizer, _texts(splits, template_))):
        tokenizer_dir = scratch / "tokenizer"  # the run's copy records the replacement
        tokenizer.save(tokenizer_dir)
        notes.append(note)
    block = config.model.block_size
    limit = min(ft.max_length, block) if ft.max_length else block
    train, val = encode_splits(spec, splits, template_, tokenizer, limit, notes)
    cfg = config.train
    steps = steps_per_epoch(config, len(train), drop_last=spec.drop_last)
    derive_schedule(config, overrides, steps, resume)
    if resume:
        done = ckpt.checkpoint_step(out, ckpt.latest_checkpoint(out) or "last")
        if done is None:
            raise LyreError(f"{out} holds no checkpoint yet (it stopped before its first save); start "
                            f"it again: lyre finetune {ft.base_source} --data {ft.data} --out {out} --force")
        if done >= cfg.max_iters:
            raise LyreError(f"{out} already finished at step {done} (train.max_iters = {cfg.max_iters}); "
                            "to train on, raise it: --set finetune.epochs=N or --set max_iters=N")
    if config.extras.get("lora") is not None:  # an unknown target fails before anything is written
        with torch.device("meta"):
            resolve_targets(build_model(config.model), list(config.extras["lora"].targets))
    if config.extras.get("lora") is not None and cfg.parallel == "fsdp":
        raise LyreError("LoRA runs train with train.parallel=ddp (the adapters are small); "
                        "FSDP is for full fine-tuning of large models")
    prepared = Prepared(config, spec, tokenizer, tokenizer_dir, template_, splits, train, val,
                        base_dir, base_checkpoint, resume, hf_base, notes, steps)
    notes.insert(0, describe_data(prepared))
    return prepared


def _default_template(base: Base, notes: list[str]) -> str:
    """alpaca, unless its opening alone fills half the base's context (the char demo's 64
    characters): then simple, the shortest template, so that the prompts fit."""
    tokenizer = replace_unknown(load_tokenizer(base.run_dir / "tokenizer"))  # a char base lacks '#'
    opening = get_template(DEFAULT_TEMPLATE).render([{"role": "user", "content": ""}])
    block = base.config.model.block_size
    if len(tokenizer.encode(opening)) <= block // 2:
        return DEFAULT_TEMPLATE
    notes.append(f"template simple: the {DEFAULT_TEMPLATE} template's opening alone takes more than "
                 f"half of this base's context ({block} tokens); choose one with --template")
    return "simple"


def _texts(splits: Splits, template: ChatTemplate):
    """All text the data gives the tokenizer: conversations as the template lays them out."""
    for records in (splits.train, splits.val, splits.test):
        for r in records:
            yield template.render(r.messages, record_tools(r)) + (r.chosen or "") + (r.rejected or "")


def _base_template(config: RunConfig) -> str | None:
    name = config.chat_template
    return None if name in (None, "plain") else name


def describe_data(p: Prepared) -> str:
    ft = p.finetune
    if p.task.reference:  # DPO: pairs, and a loss over both answers against the reference
        items, objective = "training pairs", f"DPO loss (beta {ft.beta:g}) on chosen vs rejected answers"
    else:
        items = "training sequences"
        objective = "loss on " + ("prompt and answer" if ft.train_on_prompt else "answers only")
    return (f"{p.task.name}: {len(p.splits.train):,} train / {len(p.splits.val):,} val / "
            f"{len(p.splits.test):,} test records ({len(p.train):,} {items}); template "
            f"{p.template.name}; {objective}; {describe_steps(p.config, p.steps_per_epoch)}")


def describe_model(model: nn.Module, config: RunConfig) -> str:
    trainable, total = count_parameters(model)
    lora = config.extras.get("lora")
    what = (f"LoRA rank {lora.rank}, alpha {lora.alpha:g} on {', '.join(lora.targets)}" if lora
            else "full fine-tuning" + (f" of the last {config.extras['finetune'].unfrozen_blocks} "
                                       "block(s)" if config.extras["finetune"].unfrozen_blocks else ""))
    return f"{what}: {trainable:,} trainable of {total:,} parameters ({trainable / total:.2%})"
