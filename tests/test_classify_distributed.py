"""`lyre finetune --task classify --nproc 2`: two processes (torchrun, gloo on the CPU) train a
LoRA classifier, rank 0 speaks and writes, and the run continues in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from classify_util import spam_rows, tiny_base, write_tsv

from lyre.classify.finetune import finetune_classifier
from lyre.run import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]


def test_two_processes_then_resume_in_one(tmp_path_factory, tmp_path):
    data = write_tsv(tmp_path / "spam.tsv", spam_rows(60))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lyre", "finetune", str(tiny_base(tmp_path_factory.getbasetemp())),
               "--task", "classify", "--data", str(data), "--out", str(run), "--nproc", "2",
               "--lora-rank", "2", "--no-progress", "--set", "batch_size=2", "--set", "max_iters=3"]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "global batch 4 = 2 per process x 2 processes" in proc.stdout
    assert proc.stdout.count("done:") == 1 and proc.stderr.count("LoRA adapters and the head") == 1
    assert proc.stdout.count("test: accuracy") == 1  # the report: rank 0 alone
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == sorted(set(steps)) and steps[-1] == 3
    assert all(k == "head.weight" or k.endswith(("lora_A", "lora_B"))
               for k in ckpt.load_model_state(run, "last"))
    result = finetune_classifier(out=run, resume=True, overrides=["batch_size=4", "max_iters=5"],
                                 progress=False, plot=False, quiet=True)
    assert result.train.step == 5 and result.report["test"]["rows"] == 12
