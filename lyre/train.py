"""Pretraining: the loop every later stage (fine-tuning, LoRA) reuses.

One optimizer step = `grad_accum` micro-batches of random windows, AdamW with weight decay on
matrices only (or Muon, lyre.optim), a linear warmup then cosine (or linear) decay to min_lr,
gradient clipping. The same loop runs in one process or in many started by torchrun
(lyre.distributed: DDP or FSDP, rank 0 evaluates, logs and writes checkpoints).
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
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lyre import checkpoint as ckpt
from lyre import distributed
from lyre.config import RunConfig, config_from_json, save_config
from lyre.data import _sha256, evaluate_loss, get_batch, load_meta, load_split, prepare
from lyre.errors import LyreError
from lyre.info import model_cost
from lyre.mfu import mfu, peak_flops
from lyre.model import build_model
from lyre.optim import build_optimizer, check_optimizer_config, set_learning_rate


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


def _compute_dtype(device: torch.device, dtype: str) -> torch.dtype:
    """The dtype the matmuls run in (for MFU): what autocast_context picks."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if dtype == "bfloat16" else torch.float32


def _should_compile(cfg, device: torch.device) -> bool:
    """train.compile if set; by default on CUDA where torch.compile works (Triton, sm >= 7.0)."""
    if cfg.compile is not None:
        return cfg.compile
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (7, 0):
        return False
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return False
    from torch._dynamo import config as dynamo_config

    dynamo_config.suppress_errors = True  # a graph it cannot compile runs eagerly instead
    return True


def check_train_config(cfg) -> None:
    """Reject values that would crash or silently misbehave only after minutes of training."""
    for name in ("batch_size", "grad_accum", "eval_interval", "log_interval"):
        if getattr(cfg, name) < 1:
            raise LyreError(f"train.{name} must be at least 1; got {getattr(cfg, name)}")
    for name in ("max_iters", "warmup_iters", "lr_decay_iters", "eval_windows", "threads"):
        if getattr(cfg, name) < 0:
            raise LyreError(f"train.{name} must not be negative; got {getattr(cfg, name)}")
    for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value >= 0):
            raise LyreError(f"train.{name} must be a finite number >= 0; got {value}")
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise LyreError(f"train.{name} must be in [0, 1); got {getattr(cfg, name)}")
    if cfg.schedule not in ("cosine", "linear"):
        # learning_rate() would only notice after warmup.
        raise LyreError(f"train.schedule must be cosine or linear; got {cfg.schedule!r}")


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
    """AdamW (fused on CUDA and CPU) or Muon, as cfg.optimizer says; see lyre.optim."""
    return build_optimizer(model, cfg, device)


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
    if run_dir.exists() and not run_dir.is_dir():
        raise LyreError(f"run directory {run_dir} exists and is not a directory; choose another --out")
    holds_run = (run_dir / "config.json").exists() or (run_dir / "checkpoints").exists()
    if holds_run and not force:
        raise LyreError(
            f"{run_dir} already holds a run; use --resume to continue it or --force to overwrite it"
        )
    if holds_run:
        # data/ stays: _data_dir reuses it only if it was prepared from the same corpus.
        for name in ("checkpoints", "metrics.jsonl", "loss.png", "config.json", "tokenizer"):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def _data_dir(config: RunConfig, run_dir: Path, resume: bool) -> Path:
    """The prepared token files: data.data_dir, or RUN_DIR/data prepared on first use.

    A resumed run keeps its tokens even if the corpus has moved since. A fresh run re-prepares
    RUN_DIR/data unless it came from this very corpus: a failed or overwritten (--force) run
    may have left another corpus's tokens there.
    """
    if config.data.data_dir:
        return Path(config.data.data_dir)
    data_dir = run_dir / "data"
    if resume and (data_dir / "meta.json").exists():
        return data_dir
    if not _prepared_from(data_dir, config):
        corpus = [Path(p) for p in config.data.corpus]
        prepare(corpus, config.data.tokenizer, data_dir, val_fraction=config.data.val_fraction, force=True)
    return data_dir


def _prepared_from(data_dir: Path, config: RunConfig) -> bool:
    """True if data_dir holds the tokens of config's corpus files, tokenizer and val split."""
    try:
        meta = load_meta(data_dir)
        sources = [(s["path"], s["bytes"], s["sha256"]) for s in meta["sources"]]
    except (LyreError, KeyError, TypeError):
        return False
    paths = [Path(p) for p in config.data.corpus]
    if (meta.get("tokenizer"), meta.get("val_fraction")) != (config.data.tokenizer, config.data.val_fraction):
        return False
    if [(path, size) for path, size, _ in sources] != [
        (str(p), p.stat().st_size if p.is_file() else -1) for p in paths
    ]:
        return False
    return all(digest == _sha256(p) for p, (_, _, digest) in zip(paths, sources, strict=True))


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
        check_train_config(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        check_optimizer_config(cfg)
        # Under torchrun: join the other processes (each on GPU cuda:LOCAL_RANK on CUDA).
        self.dist = distributed.setup(cfg, resolve_device(cfg.device))
        self.device = self.dist.device
        self.progress = progress and self.dist.is_main
        self.global_batch = cfg.batch_size * self.dist.world_size * cfg.grad_accum
        seed_everything(cfg.seed)  # the same initial weights in every process
        data_dir = self.dist.main_first(lambda: _data_dir(config, run_dir, resume))
        self.meta = load_meta(data_dir)
        self.train_tokens = load_split(data_dir, "train")
        self.val_tokens = load_split(data_dir, "val")
        self._check_data_length()
        if not resume and self.dist.is_main:  # a failed earlier attempt may have left another corpus's tokenizer
            shutil.rmtree(run_dir / "tokenizer", ignore_errors=True)
        if self.dist.is_main and not (run_dir / "tokenizer").exists():
            shutil.copytree(data_dir / "tokenizer", run_dir / "tokenizer")

        # FSDP keeps the whole model on the CPU until fully_shard puts the shards on the devices.
        self._home = torch.device("cpu") if self.dist.fsdp else self.device
        self.model = _init_model(config, self.meta["vocab_size"]).to(self._home)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.batch_generator = torch.Generator().manual_seed(cfg.seed)
        self.step, self.best_val_loss = 0, float("inf")
        self._rank_rng: list[dict] | None = None  # every process's RNG state, from a checkpoint
        self._saved_global_batch: int | None = None
        if resume:
            self._restore()
        elif self.dist.is_main:
            save_config(config, run_dir / "config.json")
        self.dist.seed_ranks(cfg.seed, self.step, self._rank_rng)  # own dropout stream per process
        self.optimizer = self.dist.shard(self.model, self.optimizer, lambda m: make_optimizer(m, cfg, self.device))
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for the matmuls autocast leaves in fp32
        self.compiled = _should_compile(cfg, self.device)
        self.forward = self.dist.wrap(self.model, self.compiled)
        self.autocast = autocast_context(self.device, cfg.dtype)
        self.flops_per_token = model_cost(config.model).flops_per_token
        self.peak_flops = peak_flops(self.device, _compute_dtype(self.device, cfg.dtype))
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
            self.run_dir, name, model=self.model, optimizer=self.optimizer, map_location=self._home
        )
        self.step = state["step"]
        self.best_val_loss = state.get("best_val_loss", float("inf"))
        ckpt.restore_rng_state(state["rng"], {"batches": self.batch_generator})
        self._rank_rng = state.get("rank_rng")
        self._saved_global_batch = state.get("global_batch")
        if self.dist.is_main:
            self._trim_metrics()

    def _trim_metrics(self) -> None:
        """Forget records logged after the checkpoint we resume from.

        A killed run may have logged steps it never saved; they are about to be trained again,
        and keeping both copies would draw the loss curve twice over those steps.
        """
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if isinstance(record, dict) and record.get("step", 0) <= self.step:
                kept.append(line + "\n")
        ckpt.atomic_write_text(path, "".join(kept))

    def _save(self, name: str) -> None:
        """Write checkpoint `name` from rank 0. Every process must call it (they take part in
        gathering RNG states and, with FSDP, the sharded weights); the format is the same as a
        single process's, so it resumes on any number of processes."""
        rank_rng = self.dist.rank_rng_states()
        model, optimizer = self.dist.checkpoint_sources(self.model, self.optimizer)
        if model is None:
            self.dist.barrier()
            return
        state = {
            "step": self.step,
            "best_val_loss": self.best_val_loss,
            "config": self.config.to_dict(),
            "rng": ckpt.capture_rng_state({"batches": self.batch_generator}),
            "global_batch": self.global_batch,
        }
        if rank_rng is not None:
            state["rank_rng"] = rank_rng
        ckpt.save_checkpoint(self.run_dir, name, model=model, optimizer=optimizer, state=state)
        self.dist.barrier()  # nobody leaves (say, on Ctrl-C) while rank 0 is still writing

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if not self.dist.is_main:
            return
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def train_step(self) -> float:
        """One optimizer step over grad_accum micro-batches; returns the mean loss."""
        cfg = self.config.train
        set_learning_rate(self.optimizer, learning_rate(self.step, cfg), cfg)
        # No .item() inside the loop: the host queues the work and draws the next batch while
        # the device computes; DDP averages the gradients only after the last micro-batch.
        total = torch.zeros((), device=self.device)

        def next_batch() -> tuple[torch.Tensor, torch.Tensor]:  # this process's share, pinned on CUDA
            return self.dist.get_batch(self.train_tokens, cfg.batch_size, self.config.model.block_size,
                                       self.batch_generator, self.device, draw=get_batch)

        x, y = next_batch()
        for micro in range(cfg.grad_accum):
            last = micro == cfg.grad_accum - 1
            with self.dist.sync_gradients(last):
                with self.autocast:
                    _, loss = self.forward(x, y)
                if not last:
                    x, y = next_batch()
                (loss / cfg.grad_accum).backward()
            total += loss.detach()
        loss_value = self.dist.mean(total).item() / cfg.grad_accum  # over all processes
        if not math.isfinite(loss_value):
            self._diverged(f"the loss became {loss_value}", self.step + 1)
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor
            if not math.isfinite(norm.item()):  # the update would turn every weight into NaN
                self._diverged(f"the gradient norm became {norm.item()}", self.step + 1)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value

    @contextmanager
    def _out_of_memory_as_error(self):
        """An out-of-memory in a step or an evaluation becomes one line that says what to change."""
        try:
            yield
        except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError):
            cfg = self.config.train
            self.optimizer.zero_grad(set_to_none=True)
            raise LyreError(
                f"out of memory on {self.device} at step {self.step + 1} with batch_size={cfg.batch_size} "
                f"x block_size={self.config.model.block_size} per process; lower train.batch_size and "
                f"raise train.grad_accum to keep the global batch of {self.global_batch}, or use a smaller "
                "model (on several GPUs: train.parallel=fsdp). No checkpoint was written for this step"
            ) from None

    def _describe_run(self) -> str:
        cfg, d = self.config.train, self.dist
        line = (
            f"training on {d.describe()}: global batch {self.global_batch} = {cfg.batch_size} per process"
            f" x {d.world_size} process{'es' if d.world_size > 1 else ''} x {cfg.grad_accum} accumulation"
            f" ({self.global_batch * self.config.model.block_size:,} tokens per step), {cfg.optimizer}"
            f"{', compiled' if self.compiled else ''}"
        )
        if self._saved_global_batch not in (None, self.global_batch):
            line += f" (the checkpoint was trained with global batch {self._saved_global_batch})"
        return line

    def _diverged(self, what: str, step: int) -> None:
        """Stop without saving: the weights are (about to be) garbage, the checkpoints are not.

        `step` is numbered as in metrics.jsonl and the progress bar: the first step is 1.
        """
        self.optimizer.zero_grad(set_to_none=True)
        raise LyreError(
            f"{what} at step {step}; stopped without saving. The last good checkpoint "
            f"is kept in {self.run_dir / 'checkpoints'}; try a lower train.lr or train.grad_clip=1"
        )

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
        # Rank 0 evaluates (with FSDP all do: the weights are sharded); the others wait for it.
        record = self.evaluate(exact) if self.dist.is_main or self.dist.fsdp else None
        record = self.dist.broadcast_object(record)
        if not (math.isfinite(record["val_loss"]) and math.isfinite(record["train_loss"])):
            losses = f"train {record['train_loss']}, val {record['val_loss']}"
            self._diverged(f"the evaluation loss became non-finite ({losses})", self.step)
        self._log(record)
        if record["val_loss"] < self.best_val_loss:
            self.best_val_loss = record["val_loss"]
            self._save("best")
        self._save("last")
        return record

    def run(self, stop_at: int | None = None) -> TrainResult:
        cfg = self.config.train
        end = min(cfg.max_iters, stop_at) if stop_at is not None else cfg.max_iters
        lost = self.dist.guard(lambda: f" at step {self.step + 1}")  # a process died or hung
        with _StopOnSignal() as stop, lost, self._out_of_memory_as_error():
            last_eval = self._loop(end, stop)
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

    def _loop(self, end: int, stop: _StopOnSignal) -> dict | None:
        """Train up to step `end`; returns the last periodic evaluation, if any."""
        cfg = self.config.train
        tokens_per_step = self.global_batch * self.config.model.block_size  # all processes
        # Redirected to a file, a bar redrawn ten times a second would fill it with lines.
        bar = tqdm(total=cfg.max_iters, initial=self.step, disable=not self.progress, unit="step",
                   dynamic_ncols=True, desc="train", mininterval=0.1 if sys.stderr.isatty() else 30)
        if self.dist.is_main and (self.progress or self.dist.enabled):
            bar.write(self._describe_run())
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
                    used = mfu(tok_s / self.dist.world_size, self.flops_per_token, self.peak_flops)
                    shown = {} if used is None else {"mfu": f"{used:.1%}"}
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}", **shown)
                    self._log({"step": self.step, "loss": loss, "lr": learning_rate(self.step - 1, cfg),
                               "tokens_per_s": tok_s, **({} if used is None else {"mfu": used})})
                    t0, steps_timed = time.perf_counter(), 0
                if self.step % cfg.eval_interval == 0 and self.step < cfg.max_iters:
                    last_eval = self._evaluate_and_checkpoint()
                    if self.dist.is_main:
                        bar.write(f"step {self.step}: train {last_eval['train_loss']:.4f}, "
                                  f"val {last_eval['val_loss']:.4f}")
                    t0, steps_timed = time.perf_counter(), 0
                # All processes stop after the same step, for the same signal (SIGTERM wins).
                signum = self.dist.maximum(stop.signum)
                if signum:
                    bar.close()
                    self._save("last")
                    if self.dist.is_main:
                        print(f"lyre: stopped by {_signal_name(signum)}; saved checkpoint 'last' at step "
                              f"{self.step}; continue with `lyre train --resume {self.run_dir}`", file=sys.stderr)
                    raise Stopped(signum)
        finally:
            bar.close()
        return last_eval


class Stopped(KeyboardInterrupt):
    """Training stopped on a signal after saving `last`: SIGINT (Ctrl-C) or SIGTERM (`kill`,
    systemd, Slurm preemption, `docker stop`).

    A KeyboardInterrupt, so code that handles Ctrl-C handles both. `exit_code` is what the CLI
    returns: 128 + the signal number (130, 143). Rank 0 has printed what happened and how to
    resume.
    """

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


def _signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class _StopOnSignal:
    """While training, SIGINT (Ctrl-C) or SIGTERM only asks the loop to stop after the current step.

    A checkpoint written between steps holds weights, optimizer moments and RNG states that
    agree with each other, so --resume continues exactly; one written mid-step would not.
    A second Ctrl-C stops at once, without saving. A second SIGTERM changes nothing: under
    torchrun and Slurm one stop can reach a process twice (from the launcher and from the
    scheduler), and whoever sends SIGTERM follows with SIGKILL when it has waited long enough.
    Outside the main thread nothing changes; neither does a signal that is ignored (SIGINT in a
    background job) or whose handler was not set from Python (it could not be put back).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0  # the first signal that asked to stop; 0 while none did
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in self.SIGNALS:
            previous = signal.getsignal(signum)
            if previous is None and signum == signal.SIGINT:
                previous = signal.default_int_handler  # Python's own, set from C
            if previous is None or previous is signal.SIG_IGN:
                continue
            self._previous[signum] = previous
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        # No printing here: the handler may run in the middle of tqdm writing to stderr.
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


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
        if ckpt.latest_checkpoint(run_dir) is None:  # say so before preparing any data
            raise LyreError(f"no checkpoint in {run_dir} to resume from; train first with `lyre train`")
    else:
        config = config or RunConfig()
    # Bad input (device, backend, optimizer) fails here, before anything is written. Under
    # torchrun this joins the process group; rank 0 alone prepares the run directory.
    check_train_config(config.train)
    check_optimizer_config(config.train)
    group = distributed.setup(config.train, resolve_device(config.train.device))
    if not resume:
        group.main_first(lambda: _prepare_run_dir(run_dir, config, force), others=False)
    threads = torch.get_num_threads()
    try:
        result = _train(config, run_dir, resume, stop_at, progress)
    finally:
        torch.set_num_threads(threads)  # train.threads is for this run, not the caller's process
    distributed.teardown(group)  # only after success: after a failure a peer may be gone
    if plot and group.is_main:
        from lyre.plot import plot_run

        plot_run(run_dir)
    return result


def _train(config: RunConfig, run_dir: Path, resume: bool, stop_at: int | None, progress: bool) -> TrainResult:
    trainer = Trainer(config, run_dir, resume=resume, progress=progress)
    if resume and trainer.step >= config.train.max_iters:
        raise LyreError(
            f"{run_dir} already finished at step {trainer.step} (train.max_iters = "
            f"{config.train.max_iters}); to train on, raise it: --set train.max_iters=N"
        )
    if resume and trainer.dist.is_main:
        save_config(config, run_dir / "config.json")
    return trainer.run(stop_at=stop_at)
