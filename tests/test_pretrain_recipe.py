"""Issue 22's acceptance, end to end, each command in a fresh process as a user runs it:

a folder of JSONL (one gzipped) and parquet files -> `lyre prepare` (several shards) -> `lyre train
--config gpt2-124m --set <a tiny shape on the CPU>` -> `kill -9` after a checkpoint -> `lyre train
--resume` -> the resumed steps' losses equal an uninterrupted run's, step for step (and so does
the count of tokens trained). docs/pretrain.md describes this path.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lyre.run.checkpoint import checkpoint_step, latest_checkpoint
from lyre.run.config import BUNDLED_ILIAD

# The preset at a size that trains in milliseconds per step. The schedule must not depend on
# max_iters (lr_decay_iters is fixed), since the killed run and the straight one end elsewhere.
TINY = ["n_layer=1", "n_head=2", "n_embd=16", "block_size=32", "train.batch_size=4", "train.grad_accum=2",
        "train.device=cpu", "train.compile=false", "train.dtype=float32", "train.threads=1",
        "train.warmup_iters=2", "train.lr_decay_iters=500", "train.lr=3e-3", "train.eval_interval=100000",
        "train.eval_windows=2", "train.final_eval=false", "train.log_interval=1",
        "train.checkpoint_interval=5", "train.checkpoint_minutes=0"]
TIMEOUT = 120


def lyre(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lyre", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"lyre {' '.join(map(str, args[:2]))}: {proc.stderr[-3000:]}"
    return proc


def write_corpus(folder: Path) -> int:
    """60 documents of 1..4 Iliad paragraphs in a .jsonl, a .jsonl.gz and a .parquet file."""
    paragraphs = [p.strip() for p in BUNDLED_ILIAD.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 200]
    rng = random.Random(22)
    docs = ["\n\n".join(rng.sample(paragraphs, rng.randint(1, 4))) for _ in range(60)]
    folder.mkdir()
    rows = [json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)]
    (folder / "a.jsonl").write_text("".join(rows[:20]), encoding="utf-8")
    with gzip.open(folder / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(rows[20:40])
    pq.write_table(pa.table({"id": list(range(40, 60)), "text": docs[40:]}), folder / "c.parquet", row_group_size=8)
    return len(docs)


def losses(run_dir: Path) -> dict[int, tuple[float, int]]:
    """step -> (loss, tokens trained) from metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["tokens"]) for r in records if "loss" in r}


def kill_after_a_checkpoint(cmd: list[str], cwd: Path, run_dir: Path) -> int:
    """Start a long run, SIGKILL it once `last` holds step 5 or later; the step it holds then."""
    state = run_dir / "checkpoints" / "last" / "state.json"  # written last, by rename
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not state.exists():
            assert proc.poll() is None, f"the run ended early: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    return checkpoint_step(run_dir, latest_checkpoint(run_dir))  # the kill may have hit a swap


def test_prepare_train_kill_resume_matches_an_uninterrupted_run(tmp_path):
    n_docs = write_corpus(tmp_path / "corpus")
    data = tmp_path / "data"
    out = lyre("prepare", tmp_path / "corpus", "--tokenizer", "char", "--out", data, "--workers", "2",
               "--shard-tokens", "8192", "--json", cwd=tmp_path)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["documents"] == n_docs and not summary["skipped"]
    assert summary["tokens"] == summary["train_tokens"] + summary["val_tokens"]
    assert summary["shards"] > 2  # training windows cross shard boundaries

    sets = [x for s in [f"data.data_dir={data}", *TINY] for x in ("--set", s)]
    killed = tmp_path / "killed"
    start = [sys.executable, "-m", "lyre", "train", "--config", "gpt2-124m", *sets, "--set", "train.max_iters=100000",
             "--out", str(killed), "--no-progress"]
    step = kill_after_a_checkpoint(start, tmp_path, killed)
    assert step >= 5 and step % 5 == 0
    end = step + 6
    resumed = lyre("train", "--resume", killed, "--set", f"train.max_iters={end}", "--no-progress", cwd=tmp_path)
    assert re.search(rf"from checkpoint 'last' at step {step}\b", resumed.stderr), resumed.stderr
    straight = tmp_path / "straight"
    lyre("train", "--config", "gpt2-124m", *sets, "--set", f"train.max_iters={end}", "--out", straight,
         "--no-progress", cwd=tmp_path)

    expected, got = losses(straight), losses(killed)
    assert sorted(expected) == sorted(got) == list(range(1, end + 1))  # no step logged twice or lost
    assert got == expected  # the resumed steps drew the same batches: identical losses
    tokens_per_step = 4 * 2 * 32
    assert got[end][1] == end * tokens_per_step
    config = json.loads((straight / "config.json").read_text())
    assert config["data"]["data_dir"] == str(data) and config["model"]["vocab_size"] < 50257  # the data's tokenizer
