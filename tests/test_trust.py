"""What a user must be able to trust: resume picks the furthest checkpoint, a killed run loses
little, logs read well in a file, files are readable by others, small CLI courtesies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lyre.cli import main
from lyre.generate.runs import load_run
from lyre.run import checkpoint as ckpt
from lyre.run.config import load_config
from lyre.train.trainer import train

REPO = Path(__file__).resolve().parents[1]


def lyre_cli(*argv, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "lyre", *map(str, argv)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def steps_logged(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def test_resume_after_cp_r_and_touch_starts_from_the_furthest_checkpoint(tmp_path, tiny_config):
    """`cp -r` then `touch` makes `best` (an earlier step) look newer than `last`: resume must
    still continue from `last`, and keep every logged step."""
    run_dir = tmp_path / "run"
    train(tiny_config("train.max_iters=1000", "train.eval_interval=4"), run_dir, stop_at=10,
          progress=False, plot=False)
    assert ckpt.checkpoint_step(run_dir, "last") == 10
    assert ckpt.checkpoint_step(run_dir, "best") in (4, 8)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(run_dir), str(copy)], check=True)
    time.sleep(0.01)
    subprocess.run(["touch", *map(str, (copy / "checkpoints/best").iterdir())], check=True)
    done = lyre_cli("train", "--resume", copy, "--set", "train.max_iters=12", "--no-progress",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "from checkpoint 'last' at step 10" in done.stderr
    assert steps_logged(copy) == list(range(1, 13))


def test_kill_9_before_the_first_evaluation_resumes_from_the_cadence_checkpoint(tmp_path, tiny_toml):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lyre", "train", "--config", str(tiny_toml), "--out", str(run_dir),
         "--set", "train.max_iters=1000000", "--set", "train.eval_interval=1000000",
         "--set", "train.checkpoint_interval=5", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not (ckpt.checkpoint_step(run_dir, "last") or 0) >= 10:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    saved = ckpt.checkpoint_step(run_dir, "last")
    assert saved % 5 == 0 and not ckpt.checkpoint_exists(run_dir, "best")  # no evaluation ran
    done = lyre_cli("train", "--resume", run_dir, "--set", f"train.max_iters={saved + 3}",
                    "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"at step {saved}" in done.stderr
    assert steps_logged(run_dir)[-3:] == [saved + 1, saved + 2, saved + 3]


def test_a_run_without_any_checkpoint_says_how_to_restart(tmp_path, tiny_config, capsys):
    run_dir = tmp_path / "run"
    config = tiny_config()
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))  # killed before any save
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    command = f"lyre train --config {run_dir / 'config.json'} --out {run_dir} --force"
    assert "no checkpoint yet" in err and command in err
    assert main(["train", "--config", str(tiny_toml_of(config, tmp_path)), "--out", str(run_dir)]) == 2
    assert command in capsys.readouterr().err
    # ... and that very command works.
    argv = command.split()[1:] + ["--set", "train.max_iters=4", "--no-progress"]
    assert main(argv) == 0
    assert ckpt.checkpoint_step(run_dir, "last") == 4


def tiny_toml_of(config, tmp_path: Path) -> Path:
    path = tmp_path / "again.json"
    path.write_text(json.dumps(config.to_dict()))
    return path


def test_training_off_a_terminal_prints_plain_lines(tmp_path, tiny_toml):
    done = lyre_cli("train", "--config", tiny_toml, "--out", tmp_path / "run",
                    "--set", "train.max_iters=6", "--set", "train.log_interval=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("step ") and "|" in line]
    assert [line.split(" | ")[0] for line in lines] == ["step 2", "step 4", "step 6"]
    assert all(" | loss " in line and " tok/s | " in line and line.endswith(" ms") for line in lines)


def test_tensorboard_events_are_written_when_asked(tmp_path, tiny_config):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    train(tiny_config("train.max_iters=4", "train.tensorboard=true"), run_dir, progress=False,
          plot=False)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"loss", "val_loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]


def test_umask_is_respected_by_prepared_data_and_exports(tmp_path, tiny_config, trained_run):
    previous = os.umask(0o022)
    try:
        run_dir = tmp_path / "run"
        train(tiny_config("train.max_iters=2"), run_dir, progress=False, plot=False)
        assert main(["export-hf", str(trained_run), "--out", str(tmp_path / "hf")]) == 0
    finally:
        os.umask(previous)
    assert (run_dir / "data").stat().st_mode & 0o777 == 0o755
    for path in [run_dir / "config.json", *(tmp_path / "hf").iterdir()]:
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o644, path


def test_top_level_chat_template_loads_and_resumes(tmp_path, trained_run):
    """docs/serve.md tells users to write `"chat_template": NAME` into config.json."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    raw = json.loads((run_dir / "config.json").read_text())
    raw["chat_template"] = "chatml"
    (run_dir / "config.json").write_text(json.dumps(raw))
    run = load_run(run_dir)
    assert run.config.chat_template == "chatml"
    from lyre.chat.templates import template_name_for_run

    assert template_name_for_run(run_dir) == "chatml"
    config = load_config(run_dir / "config.json", ["train.max_iters=22"])
    result = train(config, run_dir, resume=True, progress=False, plot=False)
    assert result.step == 22
    assert json.loads((run_dir / "config.json").read_text())["chat_template"] == "chatml"
    raw["chat_template"] = 7
    (run_dir / "config.json").write_text(json.dumps(raw))
    with pytest.raises(Exception, match="chat_template must be a template name"):
        load_run(run_dir)


def test_version_did_you_mean_and_eval_without_data(capsys, trained_run):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("lyre ")
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2 and "did you mean 'train'?" in capsys.readouterr().err
    assert main(["eval", str(trained_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] > 0 and "validation split" in result["data"]


@pytest.mark.parametrize("preset,params", [("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080),
                                           ("gpt2-xl", 1_557_611_200)])
def test_info_knows_the_gpt2_family(capsys, preset, params):
    assert main(["info", preset]) == 0
    assert f"{params:,}" in capsys.readouterr().out


def test_weights_and_biases_logs_offline(tmp_path, tiny_config, monkeypatch):
    """--wandb works without a network: offline mode writes the run under RUN_DIR/wandb."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    train(tiny_config("train.max_iters=4", "train.wandb=true"), run_dir, progress=False, plot=False)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("*.wandb"))  # the run's records, to `wandb sync` later
