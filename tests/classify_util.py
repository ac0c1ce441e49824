"""Helpers shared by the classification tests: a tiny base model, labelled data, a classifier.

The base is a GPT-2-shaped model (learned positions, LayerNorm, GELU, biases: exportable to
Hugging Face) with a byte-level BPE tokenizer, a context of 64 tokens, trained for ten steps on
a few KB of the Iliad: enough to have weights, fast to make. The labelled data is synthetic and
easy (spam has prizes and phone numbers), so a classifier learns it in a few dozen steps. Both
are made once per session under pytest's base temporary directory.
"""

from __future__ import annotations

import random
from pathlib import Path

from lyre.run.config import BUNDLED_ILIAD, load_config

BASE_TOML = """\
[model]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 64
dropout = 0.0

[data]
corpus = ["{corpus}"]
tokenizer = "bpe:300"

[train]
batch_size = 4
max_iters = 10
warmup_iters = 2
eval_interval = 10
eval_windows = 2
log_interval = 5
final_eval = false
device = "cpu"
threads = 1
seed = 3
"""

SPAM_WORDS = (["WIN", "FREE", "Claim", "URGENT", "Congratulations"],
              ["prize", "cash", "ringtone", "entry", "voucher"],
              ["call", "text", "reply"])
HAM_WORDS = (["ok", "sure", "hey", "thanks", "sorry"],
             ["see you at", "meet me at", "I'm at", "going to"],
             ["lunch", "home", "the station", "dinner", "work"],
             ["later", "tomorrow", "soon", "tonight"])


def spam_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (label, text) rows, half spam, half ham, shuffled."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 2:
            a, b, c = (rng.choice(w) for w in SPAM_WORDS)
            rows.append(("spam", f"{a}! {b} waiting, {c} 0{rng.randrange(10**9, 10**10)} now"))
        else:
            a, b, c, d = (rng.choice(w) for w in HAM_WORDS)
            rows.append(("ham", f"{a} {b} {c} {d}"))
    rng.shuffle(rows)
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    return path


def tiny_base(root: Path) -> Path:
    """The shared base run under `root`, trained on first use."""
    from lyre.train.trainer import train

    run_dir = root / "lyre-classify" / "base"
    if (run_dir / "checkpoints").is_dir():
        return run_dir
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    text = BUNDLED_ILIAD.read_text(encoding="utf-8")
    start = text.index("Sing, O goddess")
    corpus = run_dir.parent / "corpus.txt"
    corpus.write_text(text[start:start + 6000], encoding="utf-8")
    toml = run_dir.parent / "base.toml"
    toml.write_text(BASE_TOML.format(corpus=corpus.as_posix()), encoding="utf-8")
    train(load_config(toml), run_dir, progress=False, plot=False)
    return run_dir


TRAIN_SETTINGS = ["trainable=all", "lr=3e-3", "min_lr=3e-3", "epochs=3", "threads=1", "device=cpu"]


def tiny_classifier(root: Path) -> Path:
    """A classifier fine-tuned from tiny_base on 120 synthetic rows (made once, then shared:
    tests must not change it)."""
    from lyre.classify.finetune import finetune_classifier

    out = root / "lyre-classify" / "spam"
    if (out / "classification.json").is_file():
        return out
    base = tiny_base(root)
    data = write_tsv(root / "lyre-classify" / "spam.tsv", spam_rows(120))
    finetune_classifier(base, data, out, overrides=TRAIN_SETTINGS, progress=False,
                        quiet=True)
    return out
