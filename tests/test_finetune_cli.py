"""`lyre finetune` on bad input: one line on stderr, exit 2, no traceback, and the run directory
left as it was (not created, or untouched)."""

from __future__ import annotations

import shutil

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
