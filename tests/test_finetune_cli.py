"""`lyre finetune` on bad input: one line on stderr, exit 2, no traceback, and the run directory
left as it was (not created, or untouched)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from finetune_util import base_run, colour_records, write_json

from lyre.cli import main


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return base_run(tmp_path_factory)


@pytest.fixture
def data(tmp_path):
    return write_json(tmp_path / "data.json", colour_records(30))


def fails(capsys, argv: list[str], message: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lyre: error: ") and "\n" not in err and "Traceback" not in err, err
    assert message in err, err
    return err


def test_bad_inputs_are_one_line_and_write_nothing(base, data, tmp_path, capsys):
    out = tmp_path / "out"
    run = ["finetune", str(base), "--data", str(data), "--out", str(out), "--no-progress"]
    fails(capsys, ["finetune", "--data", str(data)], "needs BASE and --data")
    fails(capsys, ["finetune", str(tmp_path / "nope"), "--data", str(data), "--out", str(out)], "not found")
    fails(capsys, ["finetune", str(tmp_path), "--data", str(data), "--out", str(out)],
          "neither a lyre run directory")
    fails(capsys, run[:3] + [str(tmp_path / "missing.json")] + run[4:], "not found")
    fails(capsys, [*run, "--template", "nope"], "unknown chat template 'nope'")
    fails(capsys, [*run, "--task", "rlhf"], "unknown fine-tuning task 'rlhf'")
    fails(capsys, [*run, "--lora-rank", "4", "--set", "lora.targets=q_proj"],
          "LoRA target 'q_proj' matches no Linear layer")
    fails(capsys, [*run, "--lora-rank", "-1"], "--lora-rank must be 0")
    fails(capsys, [*run, "--set", "model.n_layer=3"], "cannot change when fine-tuning")
    fails(capsys, [*run, "--set", "finetune.epochs=0"], "finetune.epochs must be at least 1")
    fails(capsys, [*run, "--set", "finetune.epoch=2"], "unknown config key (did you mean 'finetune.epochs'?)")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    fails(capsys, run[:3] + [str(bad)] + run[4:], "bad.jsonl line 2 is not valid JSON")
    fails(capsys, ["finetune", "--resume", str(tmp_path / "none")], "no fine-tuning run")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data.json", "bad.jsonl"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "data.json"]


def test_a_corrupt_base_and_an_occupied_out(base, data, tmp_path, capsys, tree_digest):
    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    weights = broken / "checkpoints" / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = tmp_path / "out"
    fails(capsys, ["finetune", str(broken), "--data", str(data), "--out", str(out)], "truncated or corrupt")
    assert not out.exists()
    # A finished run is not overwritten without --force, nor touched.
    assert main(["finetune", str(base), "--data", str(data), "--out", str(out), "--no-progress",
                 "--set", "max_iters=1", "--set", "finetune.responses=false"]) == 0
    capsys.readouterr()
    before = tree_digest(out)
    fails(capsys, ["finetune", str(base), "--data", str(data), "--out", str(out)], "already holds a run")
    fails(capsys, ["finetune", "--resume", str(out), "--data", str(data)], "drop --data")
    fails(capsys, ["finetune", "--resume", str(out)], "already finished at step 1")
    assert tree_digest(out) == before


def test_records_too_long_are_counted_not_fatal(base, tmp_path, capsys):
    rows = colour_records(20) + [{"instruction": "word " * 400, "output": "x"},
                                 {"instruction": "Tell me.", "output": "word " * 400}]
    data = write_json(tmp_path / "long.json", rows)
    # a fixed split: the two long records land in the training data
    val = write_json(tmp_path / "val.json", colour_records(4))
    assert main(["finetune", str(base), "--data", str(data), "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", "max_iters=1", "--set", f"finetune.val_data={val}",
                 "--set", "finetune.responses=false"]) == 0
    err = capsys.readouterr().err
    assert "1 of 22 records of the train split skipped: 1 x the prompt alone is longer than the context" in err
    assert "1 of 21 train sequences were longer than 256 tokens and were cut at their end" in err
    assert "full fine-tuning: " in err and "trainable of" in err


# ---- one house (issue 19) ---------------------------------------------------------------------


def test_task_names_and_data_hints(base, data, tmp_path, capsys):
    """--task lists every task, classify included, with a did-you-mean; a table given to SFT
    points at --task classify (19.18); --nproc checks the config before any process starts (19.8)."""
    out = tmp_path / "out"
    run = ["finetune", str(base), "--data", str(data), "--out", str(out), "--no-progress"]
    err = fails(capsys, [*run, "--task", "sfft"], "unknown fine-tuning task 'sfft' (did you mean 'sft'?)")
    assert "known: sft, dpo, classify" in err
    table = tmp_path / "labelled.tsv"
    table.write_text("ham\tsee you at lunch\nspam\tWIN a prize now\n", encoding="utf-8")
    fails(capsys, run[:3] + [str(table)] + run[4:], "--task classify")
    fails(capsys, [*run, "--nproc", "2", "--set", "batch_size=0"], "train.batch_size must be at least 1")
    assert not out.exists()


def test_strip_nproc_once():
    from lyre.train.distributed import strip_nproc

    assert strip_nproc(["finetune", "B", "--nproc", "2", "--out", "O", "--nproc=3"]) == \
        ["finetune", "B", "--out", "O"]


def _lyre(*argv) -> subprocess.CompletedProcess:
    """`python -m lyre ARGV` in a fresh process: only what lyre.run.config itself declares is known."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "lyre", *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_lora_run_reads_everywhere_and_says_what_it_did(base, data, tmp_path, capsys):
    """`lyre info RUN` in a fresh process on a LoRA SFT run (19.1); the header says the steps
    were capped; the adapter line names the base's directory (19.18); the run's kind (19.1)."""
    from lyre.run.rundir import RunDir

    out = tmp_path / "lora"
    assert main(["finetune", str(base), "--data", str(data), "--out", str(out), "--no-progress",
                 "--lora-rank", "2", "--set", "max_iters=2", "--set", "finetune.responses=false",
                 "--set", "threads=1"]) == 0
    captured = capsys.readouterr()
    assert "steps (capped by train.max_iters;" in captured.err
    assert f"the base's weights are read from {Path(base).resolve()}" in captured.err
    assert "best val_loss" in captured.out
    assert RunDir(out).kind() == "sft" and RunDir(out).uses_lora()
    done = _lyre("info", out)
    assert done.returncode == 0, done.stderr
    resumed = _lyre("finetune", "--resume", out, "--set", "max_iters=3", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "done: step 3" in resumed.stdout


def test_dpo_header_counts_pairs(base, tmp_path, capsys):
    from finetune_util import preference_records

    prefs = write_json(tmp_path / "prefs.json", preference_records(20))
    out = tmp_path / "dpo"
    assert main(["finetune", str(base), "--data", str(prefs), "--out", str(out), "--no-progress",
                 "--task", "dpo", "--set", "max_iters=1", "--set", "finetune.responses=false",
                 "--set", "threads=1"]) == 0
    err = capsys.readouterr().err
    assert "training pairs" in err and "DPO loss (beta 0.1)" in err and "answers only" not in err
    done = _lyre("info", out)
    assert done.returncode == 0, done.stderr
