"""The road in numbers: bigram, RNN, LSTM, GRU and the GPT on the Iliad, same data, same
wall-clock budget, same threads; then the encoder-decoder on the toy dates task.

    python bench/zoo.py [--budget 90] [--threads 1] [--out DIR] [--figures DIR] [--no-seq2seq] [--smoke]

Part 1, language models. Every family trains from its bundled preset (bigram: iliad-char with
arch=bigram, lr 1e-2, no weight decay) on one prepared copy of the Iliad (char tokenizer, the
last 10% as val), for `--budget` seconds of training each, one after the other in this process.
The seconds are the process's CPU seconds of training steps: with one thread that is the
wall-clock time of the steps on a core of its own, and unlike the wall clock it does not depend
on what else the (shared) machine runs; wall seconds are printed beside. The step count is
unknown in advance, so each run measures its speed on its first steps (in warmup) and sets
max_iters so that the learning-rate decay ends at the budget; it stops at the budget or at
max_iters, whichever comes first. Evaluations (a fixed 32-window slice of val, 8 per run) are
not counted in the budget. At the end of each: the exact val loss over the whole
val split (windows of block_size, stride block_size), parameters, training tokens/s, one sample
of 200 characters from "Sing, O goddess" (temperature 0.8, seed 0, through lyre's engine: the
recurrent ones carry their state forward).

Figures: val loss against training seconds for all five (zoo-val-vs-time.png), and the cost of
context: the val loss at each position of the window (position p has p tokens of context) for
every family (zoo-loss-by-position.png).

Part 2, the original Transformer: the seq2seq-dates preset (lyre/data/toy.py's date rewriting, 20,000
pairs, 1,000 held out) trained to its max_iters; wall-clock time and exact-match accuracy on all
held-out pairs, greedy and beam 4. The bar (issue 15): >= 99% within a few CPU minutes.

Ends with one JSON line: val loss per family at equal time, and the seq2seq figures. --smoke:
half a second per family on the Iliad's first 100 KB, 4-window evals, 20-character samples, the seq2seq model
trained 4 steps on 2,000 pairs and scored on 8, figures in a temporary folder (the figures mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import add_smoke_flag, json_line, machine

from lyre.data.corpus import iter_eval_windows, load_split, prepare
from lyre.generate.simple import SamplingConfig, generate
from lyre.run.config import BUNDLED_ILIAD, load_config
from lyre.run.rundir import RunDir
from lyre.train.trainer import Trainer

FAMILIES = {  # name -> (preset, overrides)
    "bigram": ("iliad-char", ["arch=bigram", "train.lr=1e-2", "train.weight_decay=0.0"]),
    "rnn": ("iliad-rnn", []),
    "lstm": ("iliad-lstm", []),
    "gru": ("iliad-gru", []),
    "gpt": ("iliad-char", []),
}
PROMPT = "Sing, O goddess, "
CALIBRATE_S = 5.0  # seconds of steps that measure a family's speed
EVALS = 8  # val-loss points per run (for the loss-vs-time plot)


def train_for(name: str, data_dir: Path, run_dir: Path, budget: float, threads: int,
              sample_chars: int = 200, eval_windows: int = 32) -> dict:
    """Train one family for `budget` seconds of steps; its curve, final loss and speed."""
    preset, extra = FAMILIES[name]
    config = load_config(preset, [*extra, f"data.data_dir={json.dumps(str(data_dir))}",
                                  f"train.threads={threads}", 'train.device="cpu"',
                                  f"train.eval_windows={eval_windows}", "train.max_iters=1000000"])
    RunDir(run_dir).start_fresh(force=True)
    trainer = Trainer(config, run_dir, progress=False)
    torch.set_num_threads(threads)  # the Trainer set it too; the evaluations below run outside it
    cfg, model, task = config.train, trainer.model, trainer.task
    tokens_per_step = cfg.batch_size * cfg.grad_accum * config.model.block_size
    trained, wall, steps, curve, next_eval = 0.0, 0.0, 0, [], budget / EVALS
    while trained < budget and steps < cfg.max_iters:
        start, start_wall = time.process_time(), time.perf_counter()
        trainer.train_step()
        trainer.step = steps = steps + 1
        trained += time.process_time() - start
        wall += time.perf_counter() - start_wall
        if cfg.max_iters == 1000000 and trained >= min(CALIBRATE_S, budget / 10):
            # The speed so far sets the schedule: the decay ends at the budget.
            cfg.max_iters = max(steps + 1, round(budget * steps / trained))
            cfg.warmup_iters = min(cfg.warmup_iters, cfg.max_iters // 10)
        if trained >= next_eval or trained >= budget or steps >= cfg.max_iters:
            curve.append((trained, task.evaluate(model, exact=False)["val_loss"]))
            next_eval += budget / EVALS
    trainer._save("last")  # keep the run usable: lyre sample / eval / attention OUT/NAME
    trainer.tracker.close()
    final = task.evaluate(model, exact=True)
    sample = generate(model, task_tokenizer(run_dir), PROMPT,
                      SamplingConfig(max_new_tokens=sample_chars, temperature=0.8, seed=0), device="cpu")
    return {
        "val_loss": final["val_loss"], "params": model.num_parameters(), "steps": steps,
        "train_s": trained, "wall_s": wall, "tokens_per_s": steps * tokens_per_step / trained, "curve": curve,
        "sample": PROMPT + sample, "block_size": config.model.block_size, "model": model,
        "preset": preset + "".join(f" --set {o}" for o in extra),
    }


def task_tokenizer(run_dir: Path):
    from lyre.tokenizers import load_tokenizer

    return load_tokenizer(run_dir / "tokenizer")


@torch.no_grad()
def loss_by_position(model, tokens: np.ndarray, block_size: int) -> np.ndarray:
    """Mean val loss at each window position 0..block_size-1 over the whole windows of val."""
    was = model.training
    model.eval()
    total, count = torch.zeros(block_size), torch.zeros(block_size)
    for x, y in iter_eval_windows(tokens, block_size, block_size, batch_size=32):
        logits, _ = model(x, y.clamp(min=0))  # with targets every family gives all positions
        losses = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-100, reduction="none")
        valid = y != -100
        total += (losses * valid).sum(0)
        count += valid.sum(0)
    model.train(was)
    return (total / count.clamp(min=1)).numpy()


def seq2seq_part(out: Path, threads: int, smoke: bool = False) -> dict:
    from lyre.data.pairs import validation_pairs
    from lyre.generate.runs import load_run
    from lyre.train.trainer import train
    from lyre.zoo.translate import evaluate_pairs

    run_dir = out / "seq2seq-dates"
    quick = ['data.corpus=["toy:dates:2000"]', "train.max_iters=4", "train.eval_interval=4",
             "train.warmup_iters=1", "train.eval_windows=4"] if smoke else []
    config = load_config("seq2seq-dates", [f"train.threads={threads}", *quick])
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its plain log lines
        result = train(config, run_dir, force=True, progress=False, plot=False)
    wall = time.perf_counter() - start
    torch.set_num_threads(threads)
    run = load_run(run_dir, "last", "cpu")
    pairs, _ = validation_pairs(run)
    pairs = pairs[:8] if smoke else pairs
    greedy = evaluate_pairs(run.model, run.tokenizer, pairs)
    t = time.perf_counter()
    beam = evaluate_pairs(run.model, run.tokenizer, pairs, beam=4)
    beam_s = time.perf_counter() - t
    return {"steps": result.step, "train_s": wall, "val_loss": greedy.loss, "pairs": greedy.pairs,
            "exact_match_greedy": greedy.exact_match, "exact_match_beam4": beam.exact_match,
            "beam4_s": beam_s, "params": run.model.num_parameters()}


def draw(results: dict, positions: dict, figures: Path, budget: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    color = {name: f"C{i}" for i, name in enumerate(FAMILIES)}  # the same colour in every plot
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, r in results.items():
        xs, ys = zip(*r["curve"], strict=True)
        ax.plot(xs, ys, "o-", ms=3, color=color[name], label=f"{name} ({r['params'] / 1e6:.2f}M params): {r['val_loss']:.3f}")
    ax.set(xlabel="training CPU seconds (1 thread)", ylabel="val loss (nats/char)",
           title=f"The Iliad, char level, {budget:.0f} CPU s each", ylim=(1.2, 2.6))
    ax.grid(alpha=0.3)
    ax.legend()
    time_png = figures / "zoo-val-vs-time.png"
    fig.savefig(time_png, bbox_inches="tight")
    plt.close(fig)

    # Left: the loss at each position (log scale: the drop is in the first characters). Right:
    # each family minus the GPT at the same position; the text at a position is the same for
    # all, so its own difficulty cancels and what is left is how well each uses its context.
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    reference = positions.get("gpt")
    for name, losses in positions.items():
        width = 2.5 if name in ("lstm", "gpt") else 1.2
        left.plot(range(1, len(losses)), losses[1:], lw=width, color=color[name], label=name)
        if reference is not None and name not in ("gpt", "bigram"):
            right.plot(range(len(losses)), losses - reference, lw=width, color=color[name],
                       label=f"{name} - gpt")
    left.set(xscale="log", xlabel="position in the window (= characters of context)",
             ylabel="val loss (nats/char)", title="Loss at each position of the window", ylim=(1.1, 2.6))
    right.axhline(0.0, color="k", lw=0.8)
    right.set(xlabel="position in the window", ylabel="loss difference (nats/char)",
              title="Recurrent minus GPT at the same position (< 0: recurrent better)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    pos_png = figures / "zoo-loss-by-position.png"
    fig.savefig(pos_png, bbox_inches="tight")
    plt.close(fig)
    return [time_png, pos_png]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=90.0, help="training seconds per family (default 90)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for every run (default 1)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--figures", type=Path, default=Path("bench/out"), help="where the plots go")
    parser.add_argument("--no-seq2seq", action="store_true", help="skip part 2")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        scratch = tempfile.TemporaryDirectory(prefix="lyre-zoo-smoke-")  # removed at exit
        args.budget, args.figures = 0.5, Path(scratch.name) / "figures"
    names = [n for n in args.families.split(",") if n]
    unknown = set(names) - set(FAMILIES)
    if unknown:
        sys.exit(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="lyre-zoo-") as tmp:
        out = args.out or Path(tmp)
        data_dir = out / "iliad-data"
        corpus = BUNDLED_ILIAD
        if args.smoke:  # a small val split: the exact evaluations are quick
            corpus = out / "iliad-100k.txt"
            corpus.write_text(BUNDLED_ILIAD.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
        if not (data_dir / "meta.json").exists():
            prepare([corpus], "char", data_dir, val_fraction=0.1, force=True)
        val = load_split(data_dir, "val")
        results, positions = {}, {}
        for name in names:
            r = train_for(name, data_dir, out / name, args.budget, args.threads,
                          *((20, 4) if args.smoke else (200, 32)))
            positions[name] = loss_by_position(r.pop("model"), val, r["block_size"])
            results[name] = r
            print(f"{name:6s} val {r['val_loss']:.4f} | {r['params']:>9,} params | {r['steps']:>5} steps in "
                  f"{r['train_s']:.1f} cpu s ({r['wall_s']:.1f} wall) | {r['tokens_per_s']:>8,.0f} tok/s | {r['preset']}", flush=True)
            print(f"       sample: {r['sample']!r}", flush=True)
        for path in draw(results, positions, args.figures, args.budget):
            print(f"wrote {path}")
        raw = {"curves": {n: r["curve"] for n, r in results.items()},
               "loss_by_position": {n: [round(float(x), 4) for x in v] for n, v in positions.items()}}
        (args.figures / "zoo-results.json").write_text(json.dumps(raw) + "\n")
        for name, losses in positions.items():
            print(f"{name:6s} loss by position: 0: {losses[0]:.3f}  1: {losses[1]:.3f}  4: {losses[4]:.3f}  "
                  f"16: {losses[16]:.3f}  32: {losses[32]:.3f}  63: {losses[-1]:.3f}")
        s2s = None if args.no_seq2seq else seq2seq_part(out, args.threads, args.smoke)
        if s2s:
            print(f"seq2seq-dates: {s2s['steps']} steps in {s2s['train_s']:.1f}s ({s2s['params']:,} params), "
                  f"exact match on {s2s['pairs']} held-out pairs: greedy {100 * s2s['exact_match_greedy']:.2f}%, "
                  f"beam 4 {100 * s2s['exact_match_beam4']:.2f}%", flush=True)
    record = {
        "bench": "zoo", "budget_s": args.budget, "threads": args.threads, "smoke": args.smoke,
        "val_loss": {n: round(r["val_loss"], 4) for n, r in results.items()},
        "params": {n: r["params"] for n, r in results.items()},
        "tokens_per_s": {n: round(r["tokens_per_s"]) for n, r in results.items()},
        "steps": {n: r["steps"] for n, r in results.items()},
    }
    if "gpt" in results and "lstm" in results:  # > 1: the GPT's loss is lower at equal time
        record["gpt_vs_lstm_ratio"] = round(results["lstm"]["val_loss"] / results["gpt"]["val_loss"], 4)
    if s2s:
        record["seq2seq"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in s2s.items()}
    json_line(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
