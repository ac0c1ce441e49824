"""Everything a classifier run needs before its first step, checked before anything is written.

The run's config:

    [model]      the base's (only dropout and attn_impl may change: the weights fix the shape)
    [data]       the base's tokenizer
    [train]      batch 8, AdamW lr 3e-4 cosine to 3e-5, weight decay 0.1 (TRAIN_DEFAULTS), then
                 --set; max_iters = epochs x steps per epoch (a smaller --set max_iters caps
                 it), one evaluation per epoch unless --set eval_interval
    [finetune]   task "classify", the data files and their split (70/10/20, seed 123: the
                 book's), epochs (5), the base run and the sha256 of its weights
                 (lyre.finetune.config, shared with the other fine-tuning tasks)
    [classify]   the labels, pooling, what trains (lyre.classify.config)
    [lora]       with --lora-rank R (lyre.finetune.lora)

The data is read, balanced and split here (lyre.classify.data), so a bad file fails before the
run directory is touched; the Trainer's task writes the run's copies at its set-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lyre.classify.config import ClassifyConfig, classify_section
from lyre.classify.data import Dataset, load_dataset, read_split, write_split
from lyre.classify.encode import encode_examples, token_limit
from lyre.core.errors import LyreError
from lyre.core.io import remove_path, write_json
from lyre.finetune import base as base_mod
from lyre.finetune.config import FinetuneConfig
from lyre.finetune.prepare import (
    Base,
    derive_schedule,
    describe_steps,
    resolve_base,
    steps_per_epoch,
)
from lyre.run.config import RunConfig, TrainConfig, load_config
from lyre.run.rundir import RunDir
from lyre.tokenizers import load_tokenizer

TASK = "classify"
SPLITS = ("train", "val", "test")
OUTPUTS = ("classification.json", "classify.png")  # products of an earlier run, stale after a new one
MODEL_FREE = ("dropout", "attn_impl")  # model fields a fine-tune may change
# Batches of 8, AdamW, weight decay 0.1, 5 epochs as the book; every weight trains at lr 3e-4
# cosine to 3e-5 (with crop augmentation, ClassifyConfig): measured better than the book's
# last block at lr 5e-5 on small bases (docs/classify.md); the book's recipe is
# --set trainable=blocks --set lr=5e-5 --set min_lr=5e-5 --set crop=0.
TRAIN_DEFAULTS = {"batch_size": 8, "lr": 3e-4, "min_lr": 3e-5, "warmup_iters": 0,
                  "weight_decay": 0.1, "final_eval": False}
LORA_DEFAULTS = {"lr": 1e-3, "min_lr": 1e-3, "weight_decay": 0.0}
FINETUNE_DEFAULTS = {"task": TASK, "val_fraction": 0.1, "test_fraction": 0.2, "split_seed": 123,
                     "epochs": 5, "responses": False}


@dataclass
class PreparedClassifier:
    config: RunConfig
    dataset: Dataset | None  # None when resuming: the run reads its own splits
    tokenizer_dir: Path
    base_dir: Path | None  # a lyre run holding the base weights (None: resuming a full fine-tune)
    base_checkpoint: str = ""
    resume: bool = False
    hf_base: Path | None = None  # a Hugging Face base imported here, kept in RUN/base (LoRA)
    notes: list[str] = field(default_factory=list)
    steps_per_epoch: int = 0
    report: Callable[[str], None] = print  # told what trains once the model is built

    @property
    def classify(self) -> ClassifyConfig:
        return self.config.extras["classify"]

    @property
    def finetune(self) -> FinetuneConfig:
        return self.config.extras["finetune"]

    def write_run_files(self, run: RunDir) -> None:
        """The run's copies of its splits and tokenizer (and of a Hugging Face base, for LoRA)."""
        if self.resume or self.dataset is None:
            return
        for name in OUTPUTS:
            remove_path(run.path / name)
        for name in SPLITS:
            write_split(run.data_dir / f"{name}.jsonl", getattr(self.dataset.splits, name))
        write_json(run.data_dir / "meta.json", {"task": TASK, "labels": self.dataset.labels,
                                                **{n: len(getattr(self.dataset.splits, n)) for n in SPLITS}})
        run.take_tokenizer(self.tokenizer_dir, resume=False)
        if self.hf_base is not None:
            self.base_dir = base_mod.keep_with_run(self.base_dir, run.path)


def fresh_config(base: Base, lora_rank: int, data: Path, overrides: list[str],
                 scratch: Path, out: Path) -> RunConfig:
    """The run's config: the base's model and tokenizer, classification defaults, then --set."""
    from lyre.finetune.lora import LoRAConfig

    base_raw = base.config.to_dict()
    train = {**asdict(TrainConfig()), "max_iters": 0, **TRAIN_DEFAULTS,
             **(LORA_DEFAULTS if lora_rank else {})}
    raw = {
        "model": {**base_raw["model"], "dropout": 0.0},  # the book fine-tunes without dropout
        "data": base_raw["data"],
        "train": train,
        "finetune": {**asdict(FinetuneConfig()), **FINETUNE_DEFAULTS, "data": str(data.resolve()),
                     "base": str(base.run_dir), "base_checkpoint": base.checkpoint,
                     "base_sha256": base.sha256, "base_source": str(base.source)},
        "classify": asdict(ClassifyConfig(trainable="lora" if lora_rank else "all")),
    }
    if lora_rank:
        raw["lora"] = asdict(LoRAConfig(rank=lora_rank, alpha=2.0 * lora_rank))
    path = scratch / "classify-config.json"
    write_json(path, raw)
    config = load_config(path, overrides)
    ours, theirs = config.to_dict()["model"], base_raw["model"]
    changed = [k for k in ours if k not in MODEL_FREE and ours[k] != theirs.get(k)]
    if changed:
        raise LyreError(f"--set model.{changed[0]}: the model's shape comes from BASE and cannot change "
                        f"when fine-tuning (only {', '.join('model.' + k for k in MODEL_FREE)} can)")
    if config.data.tokenizer.startswith("gpt2:"):  # the run's own copy, not the base's
        config.data.tokenizer = f"gpt2:{(out / 'tokenizer').resolve()}"
    return config


def check_config(config: RunConfig) -> None:
    ft, cls, lora = config.extras["finetune"], classify_section(config), config.extras.get("lora")
    ft.validate()
    cls.validate()
    if ft.task != TASK:
        raise LyreError(f"finetune.task is {ft.task!r}; a classifier run has task {TASK!r}")
    if ft.unfrozen_blocks:
        raise LyreError("finetune.unfrozen_blocks is for generative fine-tuning; a classifier says what "
                        "trains with classify.trainable (head | blocks | all | lora) and classify.blocks")
    if lora is not None:
        lora.validate()
        if cls.trainable != "lora":
            raise LyreError(f"--lora-rank trains LoRA adapters and the head; drop "
                            f"classify.trainable={cls.trainable} (or drop --lora-rank)")
    elif cls.trainable == "lora":
        raise LyreError("classify.trainable=lora needs adapters: pass --lora-rank R")
    if lora is not None and config.train.parallel == "fsdp":
        raise LyreError("LoRA runs train with train.parallel=ddp (the adapters are small)")


def prepare_classifier(*, base: str | Path | None, data: str | Path | None, out: Path,
                       lora_rank: int | None = None, overrides: list[str] | None = None,
                       resume: bool = False, scratch: Path) -> PreparedClassifier:
    """Check and assemble everything for a classifier run (see the module docstring).

    `scratch`: a temporary directory beside `out` (a Hugging Face base is imported there).
    Nothing under `out` is written here.
    """
    overrides = list(overrides or [])
    notes: list[str] = []
    if resume:
        config = load_config(RunDir(out).config_path, overrides)
        classify_section(config, out)
        check_config(config)
        ft = config.extras["finetune"]
        base_dir = base_mod.check_base(out, ft) if "lora" in config.extras else None
        train_rows = len(read_split(out / "data" / "train.jsonl"))
        per_epoch = steps_per_epoch(config, train_rows, drop_last=True)
        derive_schedule(config, overrides, per_epoch, resume=True, evals_per_epoch=1, scale_warmup=False)
        return PreparedClassifier(config, None, out / "tokenizer", base_dir, ft.base_checkpoint,
                                  resume=True, steps_per_epoch=per_epoch)
    if base is None or data is None:
        raise LyreError("lyre finetune --task classify needs BASE and --data FILE (or --resume RUN)")
    if lora_rank is not None and lora_rank < 0:
        raise LyreError(f"--lora-rank must be 0 (no LoRA) or more; got {lora_rank}")
    resolved = resolve_base(base, scratch)
    if "classify" in resolved.config.extras:
        raise LyreError(f"base {base} is already a classifier; fine-tune from the language model "
                        f"it was made from ({resolved.config.extras['finetune'].base_source})")
    config = fresh_config(resolved, lora_rank or 0, Path(data), overrides, scratch, out)
    check_config(config)
    ft, cls = config.extras["finetune"], config.extras["classify"]
    dataset = load_dataset(ft, cls)
    cls.labels = dataset.labels
    notes += dataset.notes
    tokenizer = load_tokenizer(resolved.run_dir / "tokenizer")
    limit = token_limit(ft.max_length, config.model.block_size)
    train = encode_examples(tokenizer, dataset.splits.train, cls.labels, limit)
    cls.pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else 0
    if cls.pooling == "last":
        cls.pad_to = max(len(ids) for ids in train.ids)
    if train.truncated:
        notes.append(f"{train.truncated:,} of {len(train.ids):,} training texts were longer than "
                     f"{limit} tokens and keep their first {limit}")
    per_epoch = steps_per_epoch(config, len(train.ids), drop_last=True)
    derive_schedule(config, overrides, per_epoch, resume=False, evals_per_epoch=1,
                    scale_warmup=False)
    sizes = " / ".join(f"{len(getattr(dataset.splits, n)):,} {n}" for n in SPLITS)
    notes.insert(0, f"classify: {len(cls.labels)} classes ({', '.join(cls.labels)}); {sizes}; "
                    f"{describe_steps(config, per_epoch)}")
    hf_base = resolved.run_dir if resolved.hf and "lora" in config.extras else None
    if hf_base is not None:
        ft.base = "base"  # the LoRA run keeps its Hugging Face base in RUN/base
    return PreparedClassifier(config, dataset, resolved.run_dir / "tokenizer", resolved.run_dir,
                              resolved.checkpoint, hf_base=hf_base, notes=notes,
                              steps_per_epoch=per_epoch)
