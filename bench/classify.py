"""Spam or not, side by side: lyre's GPT classifiers against scikit-learn on the book's split.

    python bench/classify.py [--threads 1] [--work runs/bench-classify] [--quick]
        [--pretrain-steps 600] [--tokenizer bpe:4096] [--epochs 20] [--only NAME ...] [--smoke]

The data is the book's (chapter 6): ../shared/data/sms_spam.tsv balanced by undersampling to
747 ham / 747 spam, shuffled with seed 123 and split 70/10/20 into 1,045 / 149 / 300 texts
(lyre.classify.data). Every variant trains on the 1,045, picks its checkpoint by accuracy on
the 149, and is scored once on the 300; the test split is never looked at before.

  base     a small GPT (4 layers, 4 heads, 128 dims, context 128) pretrained here with
           `lyre.train.trainer.train` on the public-domain texts in ../shared/data (the Iliad, Tiny
           Shakespeare, Sherlock Holmes, The Verdict, the instruction data), a byte-level BPE
           tokenizer learned from them; cached in WORK/base-* (gitignored) and reused
  (a) pretrained     fine-tuned from that base: every weight trains, AdamW lr 3e-4 cosine to
                     3e-5, 20 epochs, batches of 8, the last non-padding token
      pretrained_crop  (a) with crop augmentation (classify.crop=0.5: half the texts drawn
                     are cut to a random prefix)
      pretrained_ls  (a) with label smoothing 0.1 in the training loss
      pretrained_lastmean  (a) with the head reading [last non-pad state, mean over real tokens]
      pretrained_ls_lastmean  both
  (b) random_init    the same recipe on the same architecture with random weights
  (c) last_token     (a) pooling the last position of a fixed-length padded batch (the book's
                     main recipe) instead of the last non-padding token
  (d) lora / last_block   LoRA adapters (rank 8, lr 1e-3) + head, and the book's choice of
                     what trains: the last block, the final norm and the head (lr 5e-4)
      defaults       `lyre finetune --task classify` as it comes (5 epochs; docs/classify.md)
      defaults_ls    the defaults with label smoothing 0.1
      book_defaults  the book's recipe (last block + norm + head, lr 5e-5 constant, 5 epochs,
                     no crop augmentation)
  (e) scikit-learn   TF-IDF word 1-2-grams + logistic regression, TF-IDF char 2-5-grams +
                     linear SVM, fitted on the same 1,045 texts

Printed: test accuracy per variant, `vs_sklearn_ratio` = lyre's best / the best scikit-learn,
fine-tuning wall time (training loop only; the machine is shared, so times move with its
load). Ends with one JSON line. --smoke: a base pretrained 4 steps on The Verdict with a
512-token BPE, the `pretrained` and `lora` variants for 2 steps each, in a temporary folder (the
same code in seconds; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import add_smoke_flag, json_line, machine

from lyre.classify.config import ClassifyConfig
from lyre.classify.data import load_dataset
from lyre.classify.finetune import finetune_classifier
from lyre.finetune.config import FinetuneConfig
from lyre.model import build_model
from lyre.run import checkpoint as ckpt
from lyre.run.config import load_config
from lyre.run.rundir import RunDir
from lyre.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"
SMS = DATA / "sms_spam.tsv"
CORPUS = ["tinyshakespeare.txt", "iliad.txt", "rag/sherlock_holmes_pg1661.txt", "the-verdict.txt",
          "instruction-data.json"]
BASE_MODEL = ["n_layer=4", "n_head=4", "n_embd=128", "block_size=128", "dropout=0.0"]


# ---- scikit-learn -----------------------------------------------------------------------------


def sklearn_baselines(splits) -> dict[str, dict]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    x_train, y_train = [e.text for e in splits.train], [e.label for e in splits.train]
    out = {}
    for name, vectorizer, model in (
        ("tfidf_word12_logreg", TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(max_iter=1000)),
        ("tfidf_char25_linsvm", TfidfVectorizer(analyzer="char", ngram_range=(2, 5)), LinearSVC()),
    ):
        start = time.perf_counter()
        model.fit(vectorizer.fit_transform(x_train), y_train)
        seconds = time.perf_counter() - start
        scores = {}
        for split in ("val", "test"):
            rows = getattr(splits, split)
            predicted = model.predict(vectorizer.transform([e.text for e in rows]))
            scores[split] = sum(p == e.label for p, e in zip(predicted, rows, strict=True)) / len(rows)
        out[name] = {"val_acc": scores["val"], "test_acc": scores["test"], "fit_s": seconds}
    return out


# ---- the bases --------------------------------------------------------------------------------


def pretrained_base(work: Path, steps: int, tokenizer: str, threads: int,
                    extra_texts: list[str] | None = None, corpus_names: list[str] = CORPUS) -> tuple[Path, float]:
    """The pretrained base run (made once per settings, then reused) and its pretraining time.
    extra_texts: unlabelled texts added to the corpus (--domain-text: the training split's)."""
    settings = [*BASE_MODEL, f"max_iters={steps}", "batch_size=16", "lr=2e-3", "min_lr=2e-4",
                f"warmup_iters={min(100, steps // 10)}", f"eval_interval={steps}", "eval_windows=16",
                "final_eval=false", "device=cpu", f"threads={threads}", "log_interval=100",
                "seed=1337"]
    corpus = [str(DATA / name) for name in corpus_names]
    if extra_texts:
        work.mkdir(parents=True, exist_ok=True)
        domain = work / "sms-train-texts.txt"
        domain.write_text("\n".join(extra_texts) + "\n", encoding="utf-8")
        corpus.append(str(domain))
    key = hashlib.sha256(json.dumps([settings, tokenizer, corpus_names, extra_texts or []]).encode()).hexdigest()[:10]
    run = work / f"base-{key}"
    done = run / "pretrain.json"
    if done.is_file():
        return run, json.loads(done.read_text())["seconds"]
    config = load_config(None, settings)
    config.data.corpus = corpus
    config.data.tokenizer = tokenizer
    print(f"pretraining the base ({steps} steps, {tokenizer}) into {run} ...", file=sys.stderr)
    start = time.perf_counter()
    result = train(config, run, force=True, progress=False, plot=False)
    seconds = time.perf_counter() - start
    done.write_text(json.dumps({"seconds": seconds, "val_loss": result.best_val_loss,
                                "settings": settings, "tokenizer": tokenizer}))
    return run, seconds


def random_base(work: Path, base: Path) -> Path:
    """The base's architecture and tokenizer with fresh random weights (seeded)."""
    run = work / f"{base.name}-random"
    if (run / "checkpoints").is_dir():
        return run
    config = RunDir(base).read_config()
    torch.manual_seed(1337)
    model = build_model(config.model)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    shutil.copytree(base / "tokenizer", run / "tokenizer")
    RunDir(run).write_config(config)
    ckpt.save_checkpoint(run, "last", model=model, optimizer=None, state={"step": 0})
    return run


# ---- lyre's variants --------------------------------------------------------------------------


# The book's chapter 6 recipe (lyre's defaults until 2026-12-01): last block + norm + head,
# lr 5e-5 constant, no crop augmentation, 5 epochs.
BOOK = ["trainable=blocks", "lr=5e-5", "min_lr=5e-5", "crop=0"]


def variants(epochs: int) -> list[tuple[str, str, int, list[str]]]:
    """(name, base "pretrained" | "random", LoRA rank, --set overrides)."""
    # Recipe R of docs/classify.md, measured without crop augmentation (as its published figures)
    recipe = ["trainable=all", "lr=3e-4", "min_lr=3e-5", f"epochs={epochs}", "crop=0"]
    return [
        ("pretrained", "pretrained", 0, recipe),
        ("random_init", "random", 0, recipe),
        ("pretrained_crop", "pretrained", 0, [*recipe[:-1], "crop=0.5"]),  # R with crop augmentation
        ("last_token", "pretrained", 0, [*recipe, "pooling=last"]),
        ("pretrained_ls", "pretrained", 0, [*recipe, "label_smoothing=0.1"]),  # R, label smoothing
        ("pretrained_lastmean", "pretrained", 0, [*recipe, "pooling=last+mean"]),  # R, last + mean
        ("pretrained_ls_lastmean", "pretrained", 0, [*recipe, "label_smoothing=0.1",
                                                     "pooling=last+mean"]),
        ("lora", "pretrained", 8, [f"epochs={epochs}", "crop=0"]),
        ("last_block", "pretrained", 0, ["trainable=blocks", "lr=5e-4", "min_lr=5e-4", f"epochs={epochs}",
                                         "crop=0"]),
        ("defaults", "pretrained", 0, []),  # `lyre finetune --task classify` as it comes
        ("defaults_ls", "pretrained", 0, ["label_smoothing=0.1"]),  # the defaults, label smoothing
        ("book_defaults", "pretrained", 0, BOOK),  # the book's recipe, 5 epochs
    ]


# Variants run at every --seeds (the others at the first seed only).
MULTI_SEED = ("pretrained", "random_init", "defaults", "defaults_ls", "pretrained_crop", "pretrained_ls",
              "pretrained_lastmean", "pretrained_ls_lastmean")


def finetune(name: str, base: Path, lora: int, overrides: list[str], work: Path, threads: int) -> dict:
    result = finetune_classifier(
        base, SMS, work / "runs" / name, lora_rank=lora or None, force=True, progress=False,
        quiet=True, plot=False,
        overrides=["classify.balance=true", "finetune.split_seed=123", "finetune.val_fraction=0.1",
                   "finetune.test_fraction=0.2",
                   "device=cpu", f"threads={threads}", *overrides],
    )
    cls = result.prepared.config.extras["classify"]
    return {"val_acc": result.report["val"]["accuracy"], "test_acc": result.report["test"]["accuracy"],
            "finetune_s": result.seconds, "steps": result.train.step, "pooling": cls.pooling,
            "trains": f"lora r{lora} + head" if lora else cls.trainable, "overrides": overrides}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-classify")
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--tokenizer", default="bpe:4096")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--only", nargs="*", help="run only these variants")
    parser.add_argument("--domain-text", action="store_true",
                        help="also pretrain on the training split's 1,045 texts (no labels; "
                             "val and test texts are never seen)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337],
                        help="train.seed of each run of `pretrained` and `random_init` (the first is "
                             "the reported run; all give the mean and range)")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if not SMS.is_file():
        sys.exit(f"bench/classify.py needs the shared data: {SMS} not found")
    corpus, smoke_overrides = CORPUS, []
    if args.smoke:
        scratch = tempfile.TemporaryDirectory(prefix="lyre-bench-classify-")  # removed at exit
        args.pretrain_steps, args.tokenizer, args.work = 4, "bpe:512", Path(scratch.name)
        args.only, args.seeds, corpus, smoke_overrides = ["pretrained", "lora"], [1337], ["the-verdict.txt"], ["max_iters=2"]
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    ft = FinetuneConfig(task="classify", data=str(SMS), val_fraction=0.1, test_fraction=0.2, split_seed=123)
    splits = load_dataset(ft, ClassifyConfig(balance=True)).splits
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    print(f"split: {sizes[0]:,} train / {sizes[1]:,} val / {sizes[2]:,} test (balanced 747/747, seed 123)")
    sk = sklearn_baselines(splits)
    extra = [e.text for e in splits.train] if args.domain_text else None
    base, pretrain_s = pretrained_base(args.work, args.pretrain_steps, args.tokenizer, args.threads, extra,
                                       corpus)
    bases = {"pretrained": base, "random": random_base(args.work, base)}
    ours, spread = {}, {}
    for name, which, lora, overrides in variants(args.epochs):
        if args.only and name not in args.only:
            continue
        seeds = args.seeds if name in MULTI_SEED else args.seeds[:1]
        runs = []
        for seed in seeds:
            runs.append(finetune(name if seed == seeds[0] else f"{name}-seed{seed}", bases[which], lora,
                                 [*overrides, f"seed={seed}", *smoke_overrides], args.work, args.threads))
            r = runs[-1]
            print(f"  {name:<13} seed {seed:<5} test {r['test_acc']:.2%}  val {r['val_acc']:.2%}  "
                  f"{r['finetune_s']:.0f} s", file=sys.stderr, flush=True)
        ours[name] = runs[0]
        if len(runs) > 1:
            accs = [r["test_acc"] for r in runs]
            spread[name] = {"seeds": seeds, "test_acc": accs, "mean": sum(accs) / len(accs)}
    print(f"\nbase: {base.name} ({args.pretrain_steps} steps, {args.tokenizer}), pretrained in {pretrain_s:.0f} s")
    print("\n| variant | pooling | trains | val acc | test acc | fine-tune s |\n|---|---|---|---:|---:|---:|")
    for name, r in ours.items():
        print(f"| {name} | {r['pooling']} | {r['trains']} | {r['val_acc']:.2%} | {r['test_acc']:.2%} | "
              f"{r['finetune_s']:.0f} |")
    for name, r in sk.items():
        print(f"| sklearn {name} | | | {r['val_acc']:.2%} | {r['test_acc']:.2%} | {r['fit_s']:.1f} |")
    for name, s in spread.items():
        print(f"{name}: test accuracy over seeds {s['seeds']}: "
              + ", ".join(f"{a:.2%}" for a in s["test_acc"]) + f" (mean {s['mean']:.2%})")
    best = max(ours, key=lambda n: ours[n]["test_acc"]) if ours else None
    best_sk = max(sk, key=lambda n: sk[n]["test_acc"])
    ratio = ours[best]["test_acc"] / sk[best_sk]["test_acc"] if best else None
    if best:
        print(f"\nbest lyre: {best} {ours[best]['test_acc']:.2%}; best scikit-learn: {best_sk} "
              f"{sk[best_sk]['test_acc']:.2%}; vs_sklearn_ratio {ratio:.4f}")
    json_line({
        "bench": "classify", "machine": machine(), "split": sizes, "threads": args.threads,
        "base": {"steps": args.pretrain_steps, "tokenizer": args.tokenizer, "domain_text": args.domain_text,
                 "pretrain_s": round(pretrain_s, 1)},
        "test_acc": {name: r["test_acc"] for name, r in ours.items()},
        "val_acc": {name: r["val_acc"] for name, r in ours.items()},
        "finetune_s": {name: round(r["finetune_s"], 1) for name, r in ours.items()},
        "sklearn_test_acc": {name: r["test_acc"] for name, r in sk.items()},
        "seeds": spread,
        "best": best, "best_test_acc": ours[best]["test_acc"] if best else None,
        "best_sklearn": best_sk, "vs_sklearn_ratio": ratio, "smoke": args.smoke,
    })


if __name__ == "__main__":
    main()
