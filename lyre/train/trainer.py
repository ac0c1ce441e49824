"""The training loop: one Trainer for pretraining and every fine-tuning task.

One optimizer step = `grad_accum` micro-batches drawn by the task, AdamW with weight decay on
matrices only (or Muon, lyre.train.optim), a linear warmup then cosine (or linear) decay to min_lr,
gradient clipping. The same loop runs in one process or in many started by torchrun
(lyre.train.distributed: DDP or FSDP, rank 0 evaluates, logs and writes checkpoints).

What is learned comes from a task (lyre.train.tasks): its data, batches, loss and evaluation; the
default is language modelling on a corpus (lyre.train.tasks.lm). Every `eval_interval` steps the task
evaluates, the `last` checkpoint is written and, if the task's metric improved, the `best` one
too. Between evaluations `last` is also written every `checkpoint_interval` steps and every
`checkpoint_minutes` minutes, so a killed run loses little.

Resuming restores weights, optimizer moments, the step, every random number generator and the
task's sampling state, so N steps + resume + N steps reproduces 2N steps straight on the CPU
exactly.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from lyre.core.devices import autocast_context, compute_dtype, resolve_device, should_compile
from lyre.core.errors import LyreError
from lyre.core.rng import capture_rng_state, restore_rng_state
from lyre.core.signals import StopOnSignal, Stopped, signal_name
from lyre.run import checkpoint as ckpt
from lyre.run.config import RunConfig
from lyre.run.rundir import RunDir
from lyre.train import distributed
from lyre.train.info import model_cost
from lyre.train.mfu import mfu, peak_flops
from lyre.train.optim import build_optimizer, check_optimizer_config, set_learning_rate
from lyre.train.tasks import Task
from lyre.train.tracking import ProgressLog, Tracker

__all__ = ["Trainer", "TrainResult", "train", "Stopped", "learning_rate", "check_train_config",
           "start_process"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_metric: float  # the best value of the metric that picks the `best` checkpoint...
    metric_name: str = "val_loss"  # ...which is this one (the task's best_metric: val_accuracy, ...)
    val_loss: float | None = None  # the last evaluation (exact over the whole split if final_eval)
    train_loss: float | None = None
    history: list[dict] = field(default_factory=list)  # what was appended to metrics.jsonl
    stopped_early: str | None = None  # why the task ended the run before max_iters, if it did

    @property
    def best_val_loss(self) -> float | None:
        """The best val loss when that is what picked the checkpoint (None otherwise: a
        classifier picks on val accuracy, see best_metric)."""
        return self.best_metric if self.metric_name == "val_loss" else None


# ----------------------------------------------------------------------------------------------
# Small pieces


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
    for name in ("checkpoint_interval",):
        if getattr(cfg, name) < 0:
            raise LyreError(f"train.{name} must not be negative; got {getattr(cfg, name)}")
    if not (math.isfinite(cfg.checkpoint_minutes) and cfg.checkpoint_minutes >= 0):
        raise LyreError(f"train.checkpoint_minutes must be a number >= 0; got {cfg.checkpoint_minutes}")
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


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def start_process(cfg) -> distributed.Dist:
    """Check the [train] settings, set torch's threads (train.threads) and, under torchrun, join
    the other processes: done once per run, before anything is written (bad input fails first)."""
    check_train_config(cfg)
    check_optimizer_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return distributed.setup(cfg, resolve_device(cfg.device))


# ----------------------------------------------------------------------------------------------
# The loop


class Trainer:
    """Holds the state of one run; `run()` trains until max_iters (or stop_at).

    `task` supplies data, batches, loss and evaluation (default: language modelling on the
    config's corpus); `model` is the model to train (default: the task builds it). `dist` is
    what start_process returned, when the caller (train()) has already started the process.
    """

    def __init__(self, config: RunConfig, run_dir: str | Path, *, model: nn.Module | None = None,
                 task: Task | None = None, resume: bool = False, progress: bool = True,
                 dist: distributed.Dist | None = None) -> None:
        self.config, self.rundir = config, RunDir(run_dir)
        self.run_dir = self.rundir.path
        cfg = config.train
        # Under torchrun: the other processes (each on GPU cuda:LOCAL_RANK on CUDA).
        self.dist = dist if dist is not None else start_process(cfg)
        self.device = self.dist.device
        self.global_batch = cfg.batch_size * self.dist.world_size * cfg.grad_accum
        self.autocast = autocast_context(self.device, cfg.dtype)
        seed_everything(cfg.seed)  # the same initial weights in every process
        if task is None:
            from lyre.train.tasks import default_task  # by the model family: lm or seq2seq

            task = default_task(config, self.autocast)
        self.task = task
        task.setup(config, self.rundir, resume=resume, dist=self.dist)

        # FSDP keeps the whole model on the CPU until fully_shard puts the shards on the devices.
        self._home = torch.device("cpu") if self.dist.fsdp else self.device
        self.model = (model if model is not None else task.build_model(config)).to(self._home)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.step = 0
        self.best_metric = -math.inf if task.higher_is_better else math.inf
        self._rank_rng: list[dict] | None = None  # every process's RNG state, from a checkpoint
        self._saved_global_batch: int | None = None
        self._tokens_seen = 0  # since the last log line (tokens per second)
        # Since step 0, across resumes (the x axis of pretraining: val loss after N tokens).
        # None until the first step after resuming a checkpoint that predates the count.
        self._tokens_total: int | None = 0
        self._saved_at = 0.0  # time.monotonic() of the last checkpoint (checkpoint_minutes)
        self.stopped_early: str | None = None  # why the task ended the run early, if it did
        if resume:
            self._restore()
        elif self.dist.is_main:
            self.rundir.write_config(config)
        self.dist.seed_ranks(cfg.seed, self.step, self._rank_rng)  # own dropout stream per process
        self.optimizer = self.dist.shard(self.model, self.optimizer,
                                         lambda m: build_optimizer(m, cfg, self.device))
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for the matmuls autocast leaves in fp32
        self.compiled = should_compile(cfg.compile, self.device)
        self.forward = self.dist.wrap(self.model, self.compiled)
        self.flops_per_token = model_cost(config.model).flops_per_token
        matmul_dtype = compute_dtype(self.device, cfg.dtype)
        self._bf16 = matmul_dtype == torch.bfloat16  # said in the run's first line
        self.peak_flops = peak_flops(self.device, matmul_dtype)
        self.log = ProgressLog(progress and self.dist.is_main, quiet=not self.dist.is_main)
        self.tracker = Tracker(self.rundir, cfg, config.to_dict(), enabled=self.dist.is_main)
        self.history = self.tracker.history

    @property
    def best_val_loss(self) -> float | None:  # the selection metric, when it is the val loss
        return self.best_metric if self.task.best_metric == "val_loss" else None

    def _restore(self) -> None:
        name = self.rundir.latest_checkpoint()
        if name is None:
            raise LyreError(self.rundir.no_checkpoint_message())
        state = ckpt.load_checkpoint(
            self.run_dir, name, model=self.model, optimizer=self.optimizer, map_location=self._home
        )
        self.step = state["step"]
        self.best_metric = state.get("best_metric", state.get("best_val_loss", self.best_metric))
        restore_rng_state(state["rng"], self.task.generators())
        self.task.load_state_dict(state.get("task", {}))
        self._rank_rng = state.get("rank_rng")
        self._saved_global_batch = state.get("global_batch")
        self._tokens_total = state.get("tokens")
        if self.dist.is_main:
            print(f"resuming {self.run_dir} from checkpoint '{name}' at step {self.step}", file=sys.stderr)
            Tracker.trim(self.rundir, self.step)

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
            "best_metric": self.best_metric,
            "best_metric_name": self.task.best_metric,  # what best_metric measures
            "config": self.config.to_dict(),
            "rng": capture_rng_state(self.task.generators()),
            "task": self.task.state_dict(),
            "global_batch": self.global_batch,
        }
        if self._tokens_total is not None:
            state["tokens"] = self._tokens_total
        if self.task.best_metric == "val_loss":
            state["best_val_loss"] = self.best_metric  # read by earlier versions
        if rank_rng is not None:
            state["rank_rng"] = rank_rng
        ckpt.save_checkpoint(self.run_dir, name, model=model, optimizer=optimizer, state=state)
        self._saved_at = time.monotonic()
        self.dist.barrier()  # nobody leaves (say, on Ctrl-C) while rank 0 is still writing

    def train_step(self) -> float:
        """One optimizer step over grad_accum micro-batches; returns the mean loss."""
        cfg = self.config.train
        set_learning_rate(self.optimizer, learning_rate(self.step, cfg), cfg)
        # No .item() inside the loop: the host queues the work and draws the next batch while
        # the device computes; DDP averages the gradients only after the last micro-batch.
        total = torch.zeros((), device=self.device)
        batch = self.dist.get_batch(self.task.draw, cfg.batch_size)
        step_tokens = batch[0].numel() * self.dist.world_size * cfg.grad_accum
        self._tokens_seen += step_tokens
        if self._tokens_total is None:  # an older checkpoint: assume its steps were this size
            self._tokens_total = self.step * step_tokens
        self._tokens_total += step_tokens
        for micro in range(cfg.grad_accum):
            last = micro == cfg.grad_accum - 1
            with self.dist.sync_gradients(last):
                with self.autocast:
                    loss = self.task.loss(self.forward, batch)
                if not last:
                    batch = self.dist.get_batch(self.task.draw, cfg.batch_size)
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
            f", {cfg.optimizer}{', bf16 autocast' if self._bf16 else ''}{', compiled' if self.compiled else ''}"
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
        """The task's evaluation of the model now, with the step."""
        return {"step": self.step, **self.task.evaluate(self.model, exact)}

    def _evaluate_and_checkpoint(self, exact: bool = False) -> dict:
        # Rank 0 evaluates (with FSDP all do: the weights are sharded); the others wait for it.
        record = self.evaluate(exact) if self.dist.is_main or self.dist.fsdp else None
        record = self.dist.broadcast_object(record)
        losses = {k: v for k, v in record.items() if k.endswith("_loss") and isinstance(v, float)}
        if not all(math.isfinite(v) for v in losses.values()):
            shown = ", ".join(f"{k} {v}" for k, v in losses.items())
            self._diverged(f"the evaluation loss became non-finite ({shown})", self.step)
        self.tracker.log(record)
        self.log.evaluation(record)
        metric = record[self.task.best_metric]
        better = metric > self.best_metric if self.task.higher_is_better else metric < self.best_metric
        if better:
            self.best_metric = metric
            self._save("best")
        self._save("last")
        return record

    def run(self, stop_at: int | None = None) -> TrainResult:
        cfg = self.config.train
        end = min(cfg.max_iters, stop_at) if stop_at is not None else cfg.max_iters
        lost = self.dist.guard(lambda: f" at step {self.step + 1}")  # a process died or hung
        try:
            with StopOnSignal() as stop, lost, self._out_of_memory_as_error():
                last_eval = self._loop(end, stop)
                if self.step >= cfg.max_iters:
                    last_eval = self._evaluate_and_checkpoint(exact=cfg.final_eval)
                elif last_eval is None or last_eval["step"] != self.step:
                    self._save("last")  # stopped early on request: keep the progress
        finally:
            self.tracker.close()
        return TrainResult(
            run_dir=self.run_dir,
            step=self.step,
            best_metric=self.best_metric,
            metric_name=self.task.best_metric,
            val_loss=last_eval.get("val_loss") if last_eval else None,
            train_loss=last_eval.get("train_loss") if last_eval else None,
            history=self.history,
            stopped_early=self.stopped_early,
        )

    def _loop(self, end: int, stop: StopOnSignal) -> dict | None:
        """Train up to step `end`; returns the last periodic evaluation, if any."""
        cfg = self.config.train
        self.log.start(total=cfg.max_iters, initial=self.step)
        if self.dist.is_main and (self.log.enabled or self.dist.enabled):
            self.log.write(self._describe_run())
        last_eval = None
        t0, self._tokens_seen, self._saved_at = time.perf_counter(), 0, time.monotonic()
        steps_timed = 0
        try:
            while self.step < end:
                loss = self.train_step()
                self.step += 1
                steps_timed += 1
                self.log.advance()
                if self.step % cfg.log_interval == 0 or self.step == end:
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    tok_s = self._tokens_seen / elapsed
                    used = mfu(tok_s / self.dist.world_size, self.flops_per_token, self.peak_flops)
                    record = {"step": self.step, "loss": loss, "lr": learning_rate(self.step - 1, cfg),
                              "tokens": self._tokens_total, "tokens_per_s": tok_s, "ms_per_step": 1000 * elapsed / steps_timed,
                              **({} if used is None else {"mfu": used})}
                    self.tracker.log(record)
                    self.log.step(record)
                    t0, self._tokens_seen, steps_timed = time.perf_counter(), 0, 0
                if self.step % cfg.eval_interval == 0 and self.step < cfg.max_iters:
                    last_eval = self._evaluate_and_checkpoint()
                    t0, self._tokens_seen, steps_timed = time.perf_counter(), 0, 0
                    # A task may end the run after an evaluation (early stopping): it is saved.
                    reason = self.task.should_stop()
                    self.stopped_early = self.dist.broadcast_object(reason)  # rank 0 evaluated
                    if self.stopped_early:
                        self.log.write(f"early stop at step {self.step}: {self.stopped_early}")
                        break
                elif self.step < end and self._checkpoint_due():
                    self._save("last")
                # All processes stop after the same step, for the same signal (SIGTERM wins).
                signum = self.dist.maximum(stop.signum)
                if signum:
                    self.log.close()
                    self._save("last")
                    if self.dist.is_main:
                        print(f"lyre: stopped by {signal_name(signum)}; saved checkpoint 'last' at step "
                              f"{self.step}; continue with `lyre train --resume {self.run_dir}`", file=sys.stderr)
                    raise Stopped(signum)
        finally:
            self.log.close()
        return last_eval

    def _checkpoint_due(self) -> bool:
        """Time for a `last` between evaluations? Every process must get the same answer: the
        step count is shared, and rank 0's clock decides for the minutes."""
        cfg = self.config.train
        if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
            return True
        if not cfg.checkpoint_minutes:
            return False
        due = int(time.monotonic() - self._saved_at >= 60 * cfg.checkpoint_minutes)
        return bool(self.dist.broadcast_object(due) if self.dist.enabled else due)


def train(
    config: RunConfig | None = None,
    run_dir: str | Path = "runs/default",
    *,
    resume: bool = False,
    force: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    plot: bool = True,
    model: nn.Module | None = None,
    task: Task | None = None,
) -> TrainResult:
    """Train a model; with resume=True continue RUN_DIR from its last checkpoint.

    `stop_at` ends the run early at that step (with a checkpoint), as if it had been killed there.
    `task` and `model` go to the Trainer (default: language modelling, a model built by the task).
    """
    run = RunDir(run_dir)
    if resume:
        # The saved config, unless the caller passes an edited copy (e.g. a larger max_iters).
        config = config or run.read_config()
        if run.latest_checkpoint() is None:  # say so before preparing any data
            raise LyreError(run.no_checkpoint_message())
    else:
        config = config or RunConfig()
    # Bad input (device, backend, optimizer) fails here, before anything is written. Under
    # torchrun this joins the process group; rank 0 alone prepares the run directory.
    threads = torch.get_num_threads()
    try:
        group = start_process(config.train)
        if not resume:
            group.main_first(lambda: run.start_fresh(force), others=False)
        trainer = Trainer(config, run.path, model=model, task=task, resume=resume, progress=progress,
                          dist=group)
        if resume and trainer.step >= config.train.max_iters:
            raise LyreError(
                f"{run.path} already finished at step {trainer.step} (train.max_iters = "
                f"{config.train.max_iters}); to train on, raise it: --set train.max_iters=N"
            )
        if resume and trainer.dist.is_main:
            run.write_config(config)
        result = trainer.run(stop_at=stop_at)
    finally:
        torch.set_num_threads(threads)  # train.threads is for this run, not the caller's process
    distributed.teardown(group)  # only after success: after a failure a peer may be gone
    if plot and group.is_main:
        from lyre.train.plot import plot_run

        plot_run(run.path)
    return result
