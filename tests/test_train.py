"""The training loop: resume is exact, crashes, Ctrl-C and SIGTERM lose nothing, NaN stops cleanly.

Runs are tiny (see conftest.py) and on the CPU, where every step is deterministic, so "the same"
below means bit-identical losses and weights, not "close".
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_util import records

from lyre.core.errors import LyreError
from lyre.model.gpt import GPT
from lyre.run import checkpoint as ckpt
from lyre.train.trainer import train

lm_task = importlib.import_module("lyre.train.tasks.lm")

# `lyre.train.trainer` is also the name of the function that lyre/__init__.py re-exports.
train_module = importlib.import_module("lyre.train.trainer")

REPO = Path(__file__).resolve().parents[1]
# 12 steps with evaluations at 4 and 8 and a final one at 12; every step logged.
SHORT = ("train.max_iters=12", "train.eval_interval=4")


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


def weights(run_dir: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return ckpt.load_model_state(run_dir, name)


def assert_same_weights(a: Path, b: Path, name: str = "last") -> None:
    wa, wb = weights(a, name), weights(b, name)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def state(run_dir: Path, name: str = "last") -> dict:
    return json.loads((run_dir / "checkpoints" / name / "state.json").read_text())["state"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_config):
    """straight(dropout) -> a run of all 12 SHORT steps in one go (trained once per dropout)."""
    done: dict[float, Path] = {}

    def get(dropout: float) -> Path:
        if dropout not in done:
            run_dir = tmp_path_factory.mktemp("straight") / f"dropout{dropout}"
            train(tiny_config(*SHORT, f"dropout={dropout}"), run_dir, progress=False, plot=False)
            done[dropout] = run_dir
        return done[dropout]

    return get


# ----------------------------------------------------------------------------------------------
# Resume


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("stop_at", [6, 8], ids=["between-evals", "at-an-eval"])
def test_n_steps_resume_n_steps_equals_2n_straight(tmp_path, tiny_config, straight, dropout, stop_at):
    """With dropout > 0 the dropout masks come from torch's RNG: equality proves it is restored."""
    run_dir = tmp_path / "split"
    first = train(tiny_config(*SHORT, f"dropout={dropout}"), run_dir, stop_at=stop_at,
                  progress=False, plot=False)
    assert first.step == stop_at and state(run_dir)["step"] == stop_at
    resumed = train(None, run_dir, resume=True, progress=False, plot=False)
    assert resumed.step == 12

    reference = straight(dropout)
    assert sorted(losses(run_dir)) == list(range(1, 13))
    assert records(run_dir) == records(reference)  # losses, learning rates and evaluations
    assert_same_weights(run_dir, reference, "last")
    assert_same_weights(run_dir, reference, "best")
    assert state(run_dir)["best_val_loss"] == state(reference)["best_val_loss"]


def test_dropout_changes_the_losses(straight):
    """Guards the test above: with dropout the RNG really is in play."""
    assert losses(straight(0.0)) != losses(straight(0.2))


@pytest.mark.parametrize("crash", ["half-written-tmp", "killed-between-renames"])
def test_killed_run_resumes_from_last_complete_checkpoint(tmp_path, tiny_config, straight, crash):
    """A run killed while writing its next checkpoint (after logging more steps) resumes exactly."""
    run_dir = tmp_path / "killed"
    train(tiny_config(*SHORT, "dropout=0.2"), run_dir, stop_at=8, progress=False, plot=False)
    root = run_dir / "checkpoints"
    # The kill: steps 9 and 10 were logged (the last line cut short), then the writer of the
    # next `last` died with half a model file and no state.json.
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "loss": 1.0, "lr": 0.01}\n{"step": 10, "loss": 1.0, "lr": 0.0')
    if crash == "killed-between-renames":
        (root / "last").rename(root / "last.old")  # died after moving the old one aside
    tmp = root / "last.tmp"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes((root / "best" / "model.safetensors").read_bytes()[:100])

    train(None, run_dir, resume=True, progress=False, plot=False)

    reference = straight(0.2)
    assert records(run_dir) == records(reference)  # the orphan steps 9 and 10 were forgotten
    assert_same_weights(run_dir, reference)
    assert sorted(p.name for p in root.iterdir()) == ["best", "last"]


def test_ctrl_c_in_process_saves_an_exact_checkpoint(tmp_path, tiny_config, straight, monkeypatch):
    """SIGINT in the middle of step 5: the step finishes, `last` is saved at 5, resume is exact."""
    real_get_batch, calls = lm_task.get_batch, []

    def get_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            signal.raise_signal(signal.SIGINT)
        return real_get_batch(*args, **kwargs)

    monkeypatch.setattr(lm_task, "get_batch", get_batch)
    run_dir = tmp_path / "interrupted"
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(*SHORT, "dropout=0.2"), run_dir, progress=False, plot=False)
    assert state(run_dir)["step"] == 5
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back

    monkeypatch.setattr(lm_task, "get_batch", real_get_batch)
    train(None, run_dir, resume=True, progress=False, plot=False)
    assert records(run_dir) == records(straight(0.2))
    assert_same_weights(run_dir, straight(0.2))


def stop_cli_training(tmp_path, tiny_toml, signum: int) -> tuple[Path, int, str]:
    """Start `lyre train` in a subprocess, send `signum` once it has logged a step, and return
    (run_dir, exit code, stderr)."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lyre", "train", "--config", str(tiny_toml), "--out", str(run_dir),
         "--set", "train.max_iters=1000000", "--set", "train.eval_interval=1000000", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 180  # imports and data preparation on a busy machine
        while not (metrics.exists() and metrics.stat().st_size > 0):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no metrics line appeared"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return run_dir, proc.returncode, stderr


def resume_three_more_steps(run_dir: Path, step: int) -> None:
    from lyre.cli import main

    assert max(losses(run_dir)) == step  # nothing logged beyond the checkpoint
    assert main(["train", "--resume", str(run_dir), "--set", f"train.max_iters={step + 3}",
                 "--no-progress"]) == 0
    assert state(run_dir)["step"] == step + 3
    assert sorted(losses(run_dir)) == list(range(1, step + 4))


def test_ctrl_c_from_the_command_line(tmp_path, tiny_toml):
    """`lyre train` under SIGINT: exit 130, a message, a `last` checkpoint that --resume continues."""
    run_dir, code, stderr = stop_cli_training(tmp_path, tiny_toml, signal.SIGINT)
    assert code == 130, stderr
    assert "Ctrl-C" in stderr and "--resume" in stderr and "Traceback" not in stderr
    step = state(run_dir)["step"]
    assert step > 0
    resume_three_more_steps(run_dir, step)


@pytest.fixture
def sigterm_guard():
    """A SIGTERM handler of the caller's that fails the test instead of killing pytest, should
    training not catch the SIGTERM it raises; training must put it back afterwards."""

    def caller(signum, frame):
        raise AssertionError("the SIGTERM reached the caller's handler, not training's")

    previous = signal.signal(signal.SIGTERM, caller)
    try:
        yield caller
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("signals", [1, 2], ids=["one-sigterm", "two-sigterms"])
def test_sigterm_in_process_saves_an_exact_checkpoint(tmp_path, tiny_config, straight, monkeypatch,
                                                      sigterm_guard, signals):
    """SIGTERM in the middle of step 5 does what Ctrl-C does: the step finishes, `last` is saved at
    5, resume is exact. A second SIGTERM (torchrun and Slurm may both send one) changes nothing."""
    real_get_batch, calls = lm_task.get_batch, []

    def get_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            for _ in range(signals):
                signal.raise_signal(signal.SIGTERM)
        return real_get_batch(*args, **kwargs)

    monkeypatch.setattr(lm_task, "get_batch", get_batch)
    run_dir = tmp_path / "terminated"
    sigint = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as stopped:
        train(tiny_config(*SHORT, "dropout=0.2"), run_dir, progress=False, plot=False)
    assert isinstance(stopped.value, train_module.Stopped)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.exit_code == 143
    assert state(run_dir)["step"] == 5
    # The caller's handlers are back.
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard
    assert signal.getsignal(signal.SIGINT) is sigint

    monkeypatch.setattr(lm_task, "get_batch", real_get_batch)
    train(None, run_dir, resume=True, progress=False, plot=False)
    assert records(run_dir) == records(straight(0.2))
    assert_same_weights(run_dir, straight(0.2))


def test_ctrl_c_after_sigterm_stops_at_once(tmp_path, tiny_config, monkeypatch, sigterm_guard):
    """Waiting for the end of the step after a SIGTERM, a Ctrl-C stops at once, without saving:
    `last` stays the one of the evaluation at step 4."""
    real_get_batch, calls = lm_task.get_batch, []

    def get_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGINT)
        return real_get_batch(*args, **kwargs)

    monkeypatch.setattr(lm_task, "get_batch", get_batch)
    run_dir = tmp_path / "impatient"
    with pytest.raises(KeyboardInterrupt) as stopped:
        train(tiny_config(*SHORT), run_dir, progress=False, plot=False)
    assert not isinstance(stopped.value, train_module.Stopped)
    assert state(run_dir)["step"] == 4
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard


def test_sigterm_from_the_command_line(tmp_path, tiny_toml):
    """`lyre train` under SIGTERM (kill, systemd, Slurm, docker stop): exit 143, one line that
    says so and how to resume, a `last` checkpoint that --resume continues."""
    run_dir, code, stderr = stop_cli_training(tmp_path, tiny_toml, signal.SIGTERM)
    assert code == 143, stderr
    step = state(run_dir)["step"]
    assert step > 0
    assert stderr.splitlines() == [
        f"lyre: stopped by SIGTERM; saved checkpoint 'last' at step {step}; "
        f"continue with `lyre train --resume {run_dir}`"
    ]
    resume_three_more_steps(run_dir, step)


def test_resume_a_finished_run_says_how_to_continue(copy_run, trained_run):
    run_dir = copy_run(trained_run)
    with pytest.raises(LyreError, match=r"already finished at step 20.*max_iters"):
        train(None, run_dir, resume=True, progress=False, plot=False)
    from lyre.run.config import config_from_json

    config = config_from_json(run_dir / "config.json")
    config.train.max_iters = 23
    assert train(config, run_dir, resume=True, progress=False, plot=False).step == 23


# ----------------------------------------------------------------------------------------------
# Divergence


def _checkpoint_snapshot(run_dir: Path, tree_digest) -> dict:
    return tree_digest(run_dir / "checkpoints")


def test_nan_loss_names_the_step_and_keeps_the_good_checkpoint(tmp_path, tiny_config, tree_digest):
    """lr=1e30 from step 5 on: the weights blow up and a later loss is inf/NaN."""
    run_dir = tmp_path / "run"
    train(tiny_config(*SHORT), run_dir, stop_at=4, progress=False, plot=False)  # eval + save at 4
    before = _checkpoint_snapshot(run_dir, tree_digest)
    assert {"best/model.safetensors", "last/model.safetensors"} <= before.keys()

    with pytest.raises(LyreError, match=r"at step (\d+)") as info:
        train(tiny_config(*SHORT, "train.lr=1e30", "train.min_lr=1e30"), run_dir, resume=True,
              progress=False, plot=False)
    step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    assert 5 <= step <= 12
    assert "\n" not in str(info.value) and "checkpoint" in str(info.value)
    assert _checkpoint_snapshot(run_dir, tree_digest) == before  # bytes and mtimes untouched


def test_nan_loss_at_a_known_step(tmp_path, tiny_config, tree_digest, monkeypatch):
    """The step in the message is the one metrics.jsonl would have logged next."""
    real_forward, calls = GPT.forward, []

    def forward(self, idx, targets=None, **kwargs):
        logits, loss = real_forward(self, idx, targets, **kwargs)
        if self.training and targets is not None:
            calls.append(1)
            if len(calls) == 7:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)
    run_dir = tmp_path / "run"
    with pytest.raises(LyreError, match=r"loss became nan at step 7\b"):
        train(tiny_config(*SHORT), run_dir, progress=False, plot=False)
    assert max(losses(run_dir)) == 6
    assert state(run_dir)["step"] == 4  # the evaluation checkpoint, not a NaN one


def test_nan_at_an_evaluation_is_not_saved(tmp_path, tiny_config, tree_digest, monkeypatch):
    run_dir = tmp_path / "run"
    train(tiny_config(*SHORT), run_dir, stop_at=4, progress=False, plot=False)
    before = _checkpoint_snapshot(run_dir, tree_digest)
    real_evaluate = train_module.Trainer.evaluate

    def evaluate(self, exact=False):
        return {**real_evaluate(self, exact), "val_loss": math.nan}

    monkeypatch.setattr(train_module.Trainer, "evaluate", evaluate)
    with pytest.raises(LyreError, match=r"evaluation loss became non-finite .* at step 8"):
        train(None, run_dir, resume=True, progress=False, plot=False)
    assert _checkpoint_snapshot(run_dir, tree_digest) == before


# ----------------------------------------------------------------------------------------------
# What a finished run leaves behind


def test_finished_run_has_checkpoints_metrics_and_plot(trained_run):
    for name in ("best", "last"):
        files = {p.name for p in (trained_run / "checkpoints" / name).iterdir()}
        assert files == {"model.safetensors", "optimizer.safetensors", "state.json"}
    assert state(trained_run)["step"] == 20
    assert (trained_run / "config.json").is_file() and (trained_run / "tokenizer").is_dir()

    recs = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 21))
    assert all({"loss", "lr", "tokens_per_s"} <= r.keys() for r in steps)
    assert [r["step"] for r in evals] == [10, 20]
    for r in evals:
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"])
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]))
    assert evals[-1]["val_exact"] is True  # the final evaluation covers the whole val split
    assert state(trained_run, "best")["best_val_loss"] == min(r["val_loss"] for r in evals)

    vocab = json.loads((trained_run / "config.json").read_text())["model"]["vocab_size"]
    assert evals[-1]["val_loss"] < math.log(vocab)  # learned something beyond uniform guessing
    assert (trained_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bigram_baseline_trains_with_the_same_loop(tmp_path, tiny_config):
    result = train(tiny_config("model.arch=bigram", "train.max_iters=40", "train.lr=0.1",
                               "train.eval_interval=1000"), tmp_path / "bigram", progress=False, plot=False)
    first = losses(tmp_path / "bigram")[1]
    assert result.step == 40
    assert result.val_loss < first - 0.5, (first, result.val_loss)
    assert ckpt.checkpoint_exists(tmp_path / "bigram", "best")


def test_eval_interval_larger_than_max_iters(tmp_path, tiny_config):
    """No periodic evaluation, but still a final one and both checkpoints."""
    run_dir = tmp_path / "run"
    result = train(tiny_config("train.max_iters=3", "train.eval_interval=1000"), run_dir,
                   progress=False, plot=False)
    assert result.step == 3 and result.val_loss is not None
    assert [r["step"] for r in records(run_dir) if "val_loss" in r] == [3]
    assert ckpt.checkpoint_exists(run_dir, "best") and ckpt.checkpoint_exists(run_dir, "last")


def test_checks_and_process_set_up_run_once_per_run(tmp_path, tiny_config, monkeypatch):
    """train() checks the settings and joins the processes once, and hands them to the Trainer
    (issue 19.10: they ran twice); the trainer's state starts in __init__, not on the class."""
    import lyre.train.distributed
    import lyre.train.trainer as training

    calls = {"check": 0, "setup": 0}
    check, setup = training.check_train_config, lyre.train.distributed.setup

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(training, "check_train_config", counted("check", check))
    monkeypatch.setattr(lyre.train.distributed, "setup", counted("setup", setup))
    train(tiny_config("train.max_iters=1", "train.eval_interval=1"), tmp_path / "run", progress=False,
          plot=False)
    assert calls == {"check": 1, "setup": 1}
    assert not {"_tokens_seen", "_saved_at", "stopped_early"} & set(vars(training.Trainer))


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.eval_interval=0", "eval_interval must be at least 1"),
        ("train.log_interval=0", "log_interval must be at least 1"),
        ("train.batch_size=0", "batch_size must be at least 1"),
        ("train.schedule=cosin", "schedule must be cosine or linear"),
        ("train.beta2=1.5", r"beta2 must be in \[0, 1\)"),
        ("train.lr=-1", "lr must be a finite number"),
    ],
)
def test_bad_train_settings_fail_before_training(tmp_path, tiny_config, override, message):
    with pytest.raises(LyreError, match=message):
        train(tiny_config(override), tmp_path / "run", progress=False, plot=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------
# The run directory's data


def test_force_with_another_corpus_trains_on_the_new_one(tmp_path, tiny_config):
    """RUN_DIR/data is reused only when it came from the same corpus."""
    run_dir = tmp_path / "run"
    train(tiny_config("train.max_iters=2"), run_dir, progress=False, plot=False)
    other = tmp_path / "abc.txt"
    other.write_text("abc " * 500)
    train(tiny_config("train.max_iters=2", f"data.corpus='{other.as_posix()}'"), run_dir, force=True,
          progress=False, plot=False)
    assert json.loads((run_dir / "data" / "meta.json").read_text())["vocab_size"] == 5  # " abc" + <|endoftext|>
    tokenizer = json.loads((run_dir / "tokenizer" / "tokenizer.json").read_text())
    assert "".join(tokenizer["chars"]) == " abc"
    assert json.loads((run_dir / "config.json").read_text())["model"]["vocab_size"] == 5


def test_a_failed_run_does_not_poison_the_next_attempt(tmp_path, tiny_config, tiny_corpus):
    """A corpus too short for the context fails; a good corpus in the same --out then works."""
    short = tmp_path / "short.txt"
    short.write_text("Sing, O goddess, the anger of Achilles")  # val split < block_size + 1
    run_dir = tmp_path / "run"
    with pytest.raises(LyreError, match="fewer than block_size"):
        train(tiny_config(f"data.corpus='{short.as_posix()}'"), run_dir, progress=False, plot=False)
    result = train(tiny_config("train.max_iters=2"), run_dir, progress=False, plot=False)
    assert result.step == 2
    meta = json.loads((run_dir / "data" / "meta.json").read_text())
    assert meta["sources"][0]["path"] == str(tiny_corpus)


def test_out_path_that_is_a_file(tmp_path, tiny_config):
    target = tmp_path / "taken"
    target.write_text("not a run")
    with pytest.raises(LyreError, match="not a directory"):
        train(tiny_config(), target, progress=False, plot=False)
    assert target.read_text() == "not a run"


def test_should_stop_is_part_of_every_task():
    """The Trainer asks task.should_stop() directly: the Task protocol declares it and every task
    of lyre.train.tasks has it (issue 19.10: it was read with getattr)."""
    from lyre.classify.task import ClassificationTask
    from lyre.finetune.dpo import DPOTask
    from lyre.finetune.sft import SFTTask
    from lyre.train.tasks import Task
    from lyre.train.tasks.lm import LanguageModelingTask
    from lyre.train.tasks.seq2seq import Seq2SeqTask

    assert "should_stop" in vars(Task)
    for task in (LanguageModelingTask, Seq2SeqTask, SFTTask, DPOTask, ClassificationTask):
        assert callable(task.should_stop), task
    assert LanguageModelingTask().should_stop() is None and Seq2SeqTask().should_stop() is None
