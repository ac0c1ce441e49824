"""`lyre finetune --nproc 2`: two processes (torchrun, gloo on the CPU) fine-tune with LoRA, rank 0
speaks and writes, and the run continues in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from finetune_util import base_run, colour_records, write_json

from lyre.finetune.command import finetune
from lyre.run import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]


def test_two_processes_then_resume_in_one(tmp_path_factory, tmp_path):
    data = write_json(tmp_path / "data.json", colour_records(40))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lyre", "finetune", str(base_run(tmp_path_factory)), "--data", str(data),
               "--out", str(run), "--nproc", "2", "--lora-rank", "2", "--no-progress",
               "--set", "batch_size=2", "--set", "max_iters=3", "--set", "finetune.epochs=4",
               "--set", "finetune.responses=false"]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "global batch 4 = 2 per process x 2 processes" in proc.stdout
    assert proc.stdout.count("done:") == 1 and proc.stderr.count("LoRA rank 2") == 1  # rank 0 speaks
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == sorted(set(steps)) and steps[-1] == 3
    assert all(k.endswith(("lora_A", "lora_B")) for k in ckpt.load_model_state(run, "last"))
    # The two-process checkpoint continues in one process with the same global batch.
    result = finetune(out=run, resume=True, overrides=["batch_size=4", "max_iters=5"], progress=False,
                      plot=False, quiet=True)
    assert result.train.step == 5
