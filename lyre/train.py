"""Pretraining: the loop every later stage (fine-tuning, LoRA) reuses.

One optimizer step = `grad_accum` micro-batches of random windows, AdamW with weight decay on
matrices only, a linear warmup then cosine (or linear) decay to min_lr, gradient clipping.
Every `eval_interval` steps the train and val losses are measured on a fixed set of windows,
the `last` checkpoint is written and, if val improved, the `best` one too.

Resuming restores weights, optimizer moments, the step, and every random number generator
(including the one that draws training windows), so N steps + resume + N steps reproduces 2N
steps straight on the CPU exactly.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lyre import checkpoint as ckpt
from lyre.config import RunConfig, config_from_json, save_config
from lyre.data import evaluate_loss, get_batch, load_meta, load_split, prepare
from lyre.errors import LyreError
from lyre.model import build_model


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_loss: float
    val_loss: float | None = None  # the last evaluation (exact over the whole split if final_eval)
    train_loss: float | None = None
    history: list[dict] = field(default_factory=list)  # what was appended to metrics.jsonl


# ----------------------------------------------------------------------------------------------
# Small pieces


def resolve_device(name: str) -> torch.device:
    """cuda > mps > cpu for "auto"; asking for a device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LyreError("train.device=cuda but CUDA is not available on this machine; use device=cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LyreError("train.device=mps but MPS is not available on this machine; use device=cpu")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise LyreError(f"train.device must be auto, cpu, cuda or mps; got {name!r}")
    return torch.device(name)


def autocast_context(device: torch.device, dtype: str):
    """bf16 autocast on CUDA by default; fp32 elsewhere (CPU bf16 is slower than fp32 for us)."""
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    if dtype == "float32":
        return nullcontext()
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise LyreError(f"train.dtype must be auto, float32 or bfloat16; got {dtype!r}")


def learning_rate(step: int, cfg) -> float:
    """Linear warmup to cfg.lr, then cosine (or linear) decay to cfg.min_lr at lr_decay_iters."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / (cfg.warmup_iters + 1)
    if step >= decay_iters:
        return cfg.min_lr
    progress = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    if cfg.schedule == "linear":
        coeff = 1.0 - progress
    elif cfg.schedule == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise LyreError(f"train.schedule must be cosine or linear; got {cfg.schedule!r}")
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)


def make_optimizer(model: nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:
    groups = model.optimizer_groups(cfg.weight_decay)
    fused = device.type == "cuda"  # one kernel for all parameters
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Run directory


def _prepare_run_dir(run_dir: Path, config: RunConfig, force: bool) -> None:
    """Refuse to write over another run unless --force, which clears its outputs first."""
    holds_run = (run_dir / "config.json").exists() or (run_dir / "checkpoints").exists()
    if holds_run and not force:
        raise LyreError(
            f"{run_dir} already holds a run; use --resume to continue it or --force to overwrite it"
        )
    if holds_run:
        for name in ("checkpoints", "metrics.jsonl", "loss.png", "config.json"):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def _data_dir(config: RunConfig, run_dir: Path) -> Path:
    """The prepared token files: data.data_dir, or RUN_DIR/data prepared on first use."""
    if config.data.data_dir:
        return Path(config.data.data_dir)
    data_dir = run_dir / "data"
    if not (data_dir / "meta.json").exists():
        corpus = [Path(p) for p in config.data.corpus]
        prepare(corpus, config.data.tokenizer, data_dir, val_fraction=config.data.val_fraction)
    return data_dir


def _init_model(config: RunConfig, vocab_size: int) -> nn.Module:
    """Random init, or the weights of another run (fine-tuning) when train.init_from is set."""
    if not config.train.init_from:
        config.model.vocab_size = vocab_size
        return build_model(config.model)
    source = Path(config.train.init_from)
    source_config = config_from_json(source / "config.json")
    # The architecture comes from the source run; training options (dropout aside) from ours.
    dropout = config.model.dropout
    config.model = source_config.model
    config.model.dropout = dropout
    if config.model.vocab_size < vocab_size:
        raise LyreError(
            f"init_from {source} has a vocabulary of {config.model.vocab_size} tokens but the "
            f"data's tokenizer has {vocab_size}; prepare the data with the source run's tokenizer"
        )
    model = build_model(config.model)
    ckpt.load_checkpoint(source, ckpt.latest_checkpoint(source) or "last", model=model)
    return model


# ----------------------------------------------------------------------------------------------
# The loop


class Trainer:
    """Holds the state of one run; `run()` trains until max_iters (or stop_at)."""

    def __init__(self, config: RunConfig, run_dir: Path, *, resume: bool, progress: bool) -> None:
        self.config, self.run_dir, self.progress = config, run_dir, progress
        cfg = config.train
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        data_dir = _data_dir(config, run_dir)
        self.meta = load_meta(data_dir)
        self.train_tokens = load_split(data_dir, "train")
        self.val_tokens = load_split(data_dir, "val")
        self._check_data_length()
        if not (run_dir / "tokenizer").exists():
            shutil.copytree(data_dir / "tokenizer", run_dir / "tokenizer")

        self.model = _init_model(config, self.meta["vocab_size"]).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.batch_generator = torch.Generator().manual_seed(cfg.seed)
        self.step, self.best_val_loss = 0, float("inf")
        if resume:
            self._restore()
        else:
            save_config(config, run_dir / "config.json")
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.autocast = autocast_context(self.device, cfg.dtype)
        self.history: list[dict] = []

    def _check_data_length(self) -> None:
        need = self.config.model.block_size + 1
        for split, tokens in (("train", self.train_tokens), ("val", self.val_tokens)):
            if len(tokens) < need:
                raise LyreError(
                    f"the {split} split has {len(tokens)} tokens, fewer than block_size+1 = {need}; "
                    "use a longer corpus or a smaller model.block_size"
                )

    def _restore(self) -> None:
        name = ckpt.latest_checkpoint(self.run_dir)
        if name is None:
            raise LyreError(f"no checkpoint in {self.run_dir} to resume from; train first with `lyre train`")
        state = ckpt.load_checkpoint(
            self.run_dir, name, model=self.model, optimizer=self.optimizer, map_location=self.device
        )
        self.step = state["step"]
        self.best_val_loss = state.get("best_val_loss", float("inf"))
        ckpt.restore_rng_state(state["rng"], {"batches": self.batch_generator})

    def _save(self, name: str) -> None:
        state = {
            "step": self.step,
            "best_val_loss": self.best_val_loss,
            "config": self.config.to_dict(),
            "rng": ckpt.capture_rng_state({"batches": self.batch_generator}),
        }
        ckpt.save_checkpoint(self.run_dir, name, model=self.model, optimizer=self.optimizer, state=state)

    def _log(self, record: dict) -> None:
        self.history.append(record)
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def train_step(self) -> float:
        """One optimizer step over grad_accum micro-batches; returns the mean loss."""
        cfg = self.config.train
        lr = learning_rate(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for _ in range(cfg.grad_accum):
            x, y = get_batch(
                self.train_tokens, cfg.batch_size, self.config.model.block_size, self.batch_generator, self.device
            )
            with self.autocast:
                _, loss = self.forward(x, y)
            (loss / cfg.grad_accum).backward()
            total += loss.item()
        loss_value = total / cfg.grad_accum
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise LyreError(
                f"loss became {loss_value} at step {self.step}; stopped without saving it. "
                f"The last good checkpoint is kept in {self.run_dir / 'checkpoints'}; try a lower train.lr"
            )
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value

    def evaluate(self, exact: bool = False) -> dict:
        cfg, block = self.config.train, self.config.model.block_size
        windows = None if exact or cfg.eval_windows <= 0 else cfg.eval_windows
        with self.autocast:
            val = evaluate_loss(self.model, self.val_tokens, block, device=self.device, max_windows=windows)
            train = evaluate_loss(
                self.model, self.train_tokens, block, device=self.device, max_windows=cfg.eval_windows or 64
            )
        return {
            "step": self.step,
            "train_loss": train["loss"],
            "val_loss": val["loss"],
            "val_perplexity": math.exp(min(val["loss"], 50.0)),
            "val_exact": windows is None,
        }

    def _evaluate_and_checkpoint(self, exact: bool = False) -> dict:
        record = self.evaluate(exact)
        self._log(record)
        if record["val_loss"] < self.best_val_loss:
            self.best_val_loss = record["val_loss"]
            self._save("best")
        self._save("last")
        return record

    def run(self, stop_at: int | None = None) -> TrainResult:
        cfg = self.config.train
        end = min(cfg.max_iters, stop_at) if stop_at is not None else cfg.max_iters
        tokens_per_step = cfg.batch_size * cfg.grad_accum * self.config.model.block_size
        bar = tqdm(total=cfg.max_iters, initial=self.step, disable=not self.progress, unit="step",
                   dynamic_ncols=True, desc="train")
        last_eval = None
        t0, steps_timed = time.perf_counter(), 0
        try:
            while self.step < end:
                loss = self.train_step()
                self.step += 1
                steps_timed += 1
                bar.update(1)
                if self.step % cfg.log_interval == 0 or self.step == end:
                    tok_s = tokens_per_step * steps_timed / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
                    self._log({"step": self.step, "loss": loss, "lr": learning_rate(self.step - 1, cfg),
                               "tokens_per_s": tok_s})
                    t0, steps_timed = time.perf_counter(), 0
                if self.step % cfg.eval_interval == 0 and self.step < cfg.max_iters:
                    last_eval = self._evaluate_and_checkpoint()
                    bar.write(f"step {self.step}: train {last_eval['train_loss']:.4f}, "
                              f"val {last_eval['val_loss']:.4f}")
                    t0, steps_timed = time.perf_counter(), 0
        except KeyboardInterrupt:
            bar.close()
            self._save("last")
            raise
        finally:
            bar.close()
        if self.step >= cfg.max_iters:
            last_eval = self._evaluate_and_checkpoint(exact=cfg.final_eval)
        elif last_eval is None or last_eval["step"] != self.step:
            self._save("last")  # stopped early on request: keep the progress
        return TrainResult(
            run_dir=self.run_dir,
            step=self.step,
            best_val_loss=self.best_val_loss,
            val_loss=last_eval["val_loss"] if last_eval else None,
            train_loss=last_eval["train_loss"] if last_eval else None,
            history=self.history,
        )


def train(
    config: RunConfig | None = None,
    run_dir: str | Path = "runs/default",
    *,
    resume: bool = False,
    force: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    plot: bool = True,
) -> TrainResult:
    """Train a model; with resume=True continue RUN_DIR from its last checkpoint.

    `stop_at` ends the run early at that step (with a checkpoint), as if it had been killed there.
    """
    run_dir = Path(run_dir)
    if resume:
        # The saved config, unless the caller passes an edited copy (e.g. a larger max_iters).
        config = config or config_from_json(run_dir / "config.json")
    else:
        config = config or RunConfig()
        _prepare_run_dir(run_dir, config, force)
    trainer = Trainer(config, run_dir, resume=resume, progress=progress)
    if resume:
        save_config(config, run_dir / "config.json")
    result = trainer.run(stop_at=stop_at)
    if plot:
        from lyre.plot import plot_run

        plot_run(run_dir)
    return result
