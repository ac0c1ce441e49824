"""Training speed from token shards vs from one file: the streaming loader costs nothing.

    python bench/loader.py [--steps 40] [--rounds 5] [--shard-tokens 32768] [--threads 2] [--smoke]

The same tokens in the two layouts lyre trains on:
* shards: `lyre prepare` of the bundled Iliad, one JSONL document per paragraph (char
  tokenizer), cut into files of --shard-tokens tokens (about 20 train shards: many windows
  cross a shard boundary) with manifest.json;
* one file: those shards concatenated into train.bin / val.bin with the meta.json of
  directories prepared before shards (the single-file path of earlier lyre versions).
The same small model (2 layers, 128 wide, context 128, batch 16; data loading is a larger share
of a step for a small model than a large one) trains from each, built the way `lyre train`
builds it (Trainer, `data.data_dir`), with the same seed: both draw the same windows, so the
losses must be identical, step for step. The two take turns, --steps steps each per round, for
--rounds rounds (untimed warm-up steps first); the median of the per-round ratios is
loader_speed_ratio = shards tokens/s / one-file tokens/s (goal >= 0.98). Then the loader alone:
microseconds to draw one batch from each layout (no model: the cost the ratio is about, without
the noise of the steps). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import add_smoke_flag, json_line, machine, median

from lyre.run.config import BUNDLED_ILIAD, load_config
from lyre.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ["n_layer=2", "n_head=4", "n_embd=128", "block_size=128", "dropout=0.0", "train.batch_size=16",
         "train.grad_accum=1", "train.device=cpu", "train.compile=false", "train.dtype=float32",
         "train.warmup_iters=0", "train.eval_interval=1000000", "train.max_iters=1000000"]


def prepare_shards(work: Path, shard_tokens: int) -> Path:
    """The Iliad as JSONL documents (its paragraphs) -> `lyre prepare` -> a sharded directory."""
    paragraphs = [p.strip() for p in BUNDLED_ILIAD.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    corpus = work / "iliad.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs), encoding="utf-8")
    out = work / "shards"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "lyre", "prepare", str(corpus), "--tokenizer", "char", "--out", str(out),
                    "--shard-tokens", str(shard_tokens), "--workers", "1", "--json"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return out


def single_file_copy(shards: Path, out: Path) -> Path:
    """The same tokens as train.bin / val.bin + the meta.json of the single-file layout."""
    manifest = json.loads((shards / "manifest.json").read_text())
    out.mkdir()
    for split in ("train", "val"):
        with (out / f"{split}.bin").open("wb") as f:
            for shard in manifest["shards"][split]:
                f.write((shards / shard["file"]).read_bytes())
    shutil.copytree(shards / "tokenizer", out / "tokenizer")
    meta = {key: manifest.get(key) for key in ("dtype", "vocab_size", "train_tokens", "val_tokens", "tokenizer",
                                               "val_fraction", "eot_id")}
    meta.update(sources=[], document_separator=None)
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def trainer(data_dir: Path, run_dir: Path, seed: int) -> Trainer:
    config = load_config("iliad-char", [*SHAPE, f"data.data_dir={data_dir}", f"train.seed={seed}"])
    return Trainer(config, run_dir, progress=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per layout per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--shard-tokens", type=int, default=32768)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--seed", type=int, default=1337)
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.rounds, args.warmup = 3, 2, 1
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="lyre-bench-loader-"))
    try:
        shards = prepare_shards(work, args.shard_tokens)
        single = single_file_copy(shards, work / "single")
        manifest = json.loads((shards / "manifest.json").read_text())
        n_shards = len(manifest["shards"]["train"])
        print(f"data:    {manifest['train_tokens']:,} train tokens in {n_shards} shards of "
              f"{args.shard_tokens:,} | the same in one train.bin", flush=True)
        trainers = {"shards": trainer(shards, work / "run-shards", args.seed),
                    "single_file": trainer(single, work / "run-single", args.seed)}
        tokens_per_step = 16 * 128
        losses: dict[str, list[float]] = {name: [] for name in trainers}
        rates: dict[str, list[float]] = {name: [] for name in trainers}

        def steps(name: str, n: int) -> float:
            t = trainers[name]
            t0 = time.perf_counter()
            for _ in range(n):
                losses[name].append(t.train_step())
                t.step += 1
            return time.perf_counter() - t0

        for name in trainers:
            steps(name, args.warmup)
        names = list(trainers)
        for r in range(args.rounds):
            for name in names[r % 2:] + names[: r % 2]:
                rates[name].append(tokens_per_step * args.steps / steps(name, args.steps))
            print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:,.0f} tok/s" for n in names), flush=True)
        # The loader alone, without the model: microseconds per batch drawn (less noisy than a step).
        draws: dict[str, list[float]] = {name: [] for name in trainers}
        n_draws = 50 if args.smoke else 2000
        for r in range(args.rounds):
            for name in names[r % 2:] + names[: r % 2]:
                t = trainers[name]
                t0 = time.perf_counter()
                for _ in range(n_draws):
                    t.task.draw(16, t.device)
                draws[name].append(1e6 * (time.perf_counter() - t0) / n_draws)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    same = np.array_equal(losses["shards"], losses["single_file"])
    ratio = median([a / b for a, b in zip(rates["shards"], rates["single_file"], strict=True)])
    record = {"bench": "loader", "smoke": args.smoke, "threads": args.threads, "train_shards": n_shards,
              "shards_tok_s": round(median(rates["shards"])), "single_file_tok_s": round(median(rates["single_file"])),
              "identical_losses": bool(same), "loader_speed_ratio": round(ratio, 3),
              "shards_draw_us": round(median(draws["shards"]), 1),
              "single_file_draw_us": round(median(draws["single_file"]), 1)}
    print(f"\nshards {record['shards_tok_s']:,} tok/s, one file {record['single_file_tok_s']:,} tok/s; "
          f"identical losses over {len(losses['shards'])} steps: {same}")
    print(f"drawing a batch of 16 x {128 + 1} tokens alone: shards {record['shards_draw_us']:.0f} us, "
          f"one file {record['single_file_draw_us']:.0f} us (median of {args.rounds} rounds of {n_draws})")
    print(f"loader_speed_ratio (shards / one file): {ratio:.3f} (goal >= 0.98)")
    json_line(record)
    return record


if __name__ == "__main__":
    main()
