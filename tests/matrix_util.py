"""Helpers of tests/test_matrix.py: the `lyre` command in a fresh process, the seven tiny runs.

Every call here starts `python -m lyre ...` in its own process, with this source tree first on
the path, one CPU thread and a private chat history file, so a verb cannot lean on what an
earlier import in the test process happened to set up.

The runs are made by the CLI as a user would make them, from data written here:

    gpt         pretrained, GPT-2 shaped (exportable), byte-level BPE with <|endoftext|>
    sft         full fine-tune of gpt on Alpaca records
    lora        LoRA (rank 2) fine-tune of gpt on the same records
    dpo         DPO of sft on preference pairs
    classifier  `finetune --task classify` of gpt on a labelled TSV (spam / ham)
    lstm        the iliad-lstm preset, shrunk, on the same text
    seq2seq     the seq2seq-dates preset, shrunk, on 300 toy:dates pairs
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import lyre

SOURCE_ROOT = Path(lyre.__file__).resolve().parents[1]  # the tree under test, first on the path
TIMEOUT = 180  # seconds one command may take before the test fails (a hang is a failure)

# Shared by every run: tiny, one thread, on the CPU, no progress bar.
QUIET = ["--no-progress", "--set", "threads=1", "--set", "device=cpu"]
TINY_GPT = ["n_layer=1", "n_head=2", "n_embd=32", "block_size=256", "dropout=0.0", "pos=learned",
            "norm=layernorm", "act=gelu", "bias=true", "batch_size=2", "max_iters=10",
            "warmup_iters=2", "eval_interval=10", "eval_windows=2", "log_interval=5", "seed=7"]
TINY_LSTM = ["n_embd=32", "n_hidden=32", "block_size=32", "batch_size=2", "max_iters=10",
             "warmup_iters=2", "eval_interval=10", "eval_windows=2", "log_interval=5"]
TINY_SEQ2SEQ = ["data.corpus=toy:dates:300", "n_layer=1", "n_head=2", "n_embd=32", "dropout=0.0",
                "batch_size=4", "max_iters=10", "warmup_iters=2", "eval_interval=10",
                "eval_windows=2", "log_interval=5"]
# Fine-tunes stop at 4 steps (a cap below epochs x steps per epoch), so a resume can go on.
TINY_FINETUNE = ["max_iters=4", "finetune.responses=false"]
FINETUNE_STEPS = 4


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:  # what an assertion message shows
        return f"exit {self.code}\n--- stdout\n{self.out[-2000:]}\n--- stderr\n{self.err[-3000:]}"


def env(home: Path) -> dict[str, str]:
    """The environment of every command: this tree first, one thread, a private home."""
    path = os.pathsep.join(p for p in (str(SOURCE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "LYRE_HISTORY": str(home / "chat_history"), "HOME": str(home), "NO_COLOR": "1",
            "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false"}


def lyre_cmd(*argv) -> list[str]:
    return [sys.executable, "-m", "lyre", *(str(a) for a in argv)]


def run_lyre(home: Path, *argv, cwd: Path | None = None, timeout: float = TIMEOUT) -> Result:
    """`lyre ARGV` in a fresh process: (exit code, stdout, stderr); stdin is empty."""
    proc = subprocess.run(lyre_cmd(*argv), env=env(home), cwd=cwd or home, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def sets(settings: list[str]) -> list[str]:
    return [arg for s in settings for arg in ("--set", s)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# Data the runs learn from (written by the test, no shared files)

def write_data(root: Path) -> dict[str, Path]:
    from classify_util import spam_rows, write_tsv
    from finetune_util import colour_records, preference_records, write_json

    from lyre.run.config import BUNDLED_ILIAD

    root.mkdir(parents=True, exist_ok=True)
    text = BUNDLED_ILIAD.read_text(encoding="utf-8")
    start = text.index("Sing, O goddess")
    corpus = root / "corpus.txt"
    corpus.write_text(text[start:start + 6000], encoding="utf-8")
    return {"corpus": corpus,
            "alpaca": write_json(root / "alpaca.json", colour_records(30)),
            "prefs": write_json(root / "prefs.json", preference_records(30)),
            "labels": write_tsv(root / "labels.tsv", spam_rows(60))}


# ----------------------------------------------------------------------------------------------
# The seven runs

KINDS = ("gpt", "sft", "lora", "dpo", "classifier", "lstm", "seq2seq")
PRETRAINED = ("gpt", "lstm", "seq2seq")  # made by `lyre train`; the others by `lyre finetune`


def build_runs(root: Path) -> dict[str, Path]:
    """The seven runs under root/runs, each made by one `lyre train` or `lyre finetune`."""
    data = write_data(root / "data")
    runs = root / "runs"
    corpus = f"data.corpus={data['corpus']}"
    commands = {
        "gpt": ["train", "--out", runs / "gpt", *sets([corpus, "data.tokenizer=bpe:300", *TINY_GPT])],
        "sft": ["finetune", runs / "gpt", "--data", data["alpaca"], "--out", runs / "sft",
                *sets(TINY_FINETUNE)],
        "lora": ["finetune", runs / "gpt", "--data", data["alpaca"], "--out", runs / "lora",
                 "--lora-rank", "2", *sets(TINY_FINETUNE)],
        "dpo": ["finetune", runs / "sft", "--task", "dpo", "--data", data["prefs"], "--out",
                runs / "dpo", *sets(TINY_FINETUNE)],
        "classifier": ["finetune", runs / "gpt", "--task", "classify", "--data", data["labels"],
                       "--out", runs / "classifier", *sets(["max_iters=4"])],
        "lstm": ["train", "--config", "iliad-lstm", "--out", runs / "lstm", *sets([corpus, *TINY_LSTM])],
        "seq2seq": ["train", "--config", "seq2seq-dates", "--out", runs / "seq2seq", *sets(TINY_SEQ2SEQ)],
    }
    for kind in KINDS:
        result = run_lyre(root, *commands[kind], *QUIET)
        if result.code != 0:
            raise RuntimeError(f"making the {kind} run failed: {' '.join(map(str, commands[kind]))}\n{result}")
    return {kind: runs / kind for kind in KINDS}


def last_step(run_dir: Path) -> int:
    """The highest step metrics.jsonl records."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return max(json.loads(line)["step"] for line in lines if line.strip())
