"""Muon vs AdamW on the CPU presets: steps and wall time to reach AdamW's final val loss.

    python bench/optimizer.py [--preset shakespeare-char-cpu iliad-char] [--max-iters N]
        [--eval-interval 100] [--muon-lr 0.02 ...] [--threads 1] [--out runs/bench-optimizer] [--smoke]

For each preset: one AdamW run (the preset's own optimizer settings) and one Muon run per
--muon-lr (Muon on the hidden matrices, the preset's AdamW on embeddings, head and gains), with
the same data, seed, warmup + decay schedule and step budget. The val loss is exact (every
window of the val split) every --eval-interval steps and at the end. The target is AdamW's
final val loss; for Muon we report the first evaluated step at or below it (so the step count
is rounded up to a multiple of --eval-interval) and the training wall time up to that step.
Training wall time excludes evaluation: it is summed from the log lines' tokens/s. Runs of one
preset are sequential, so on a busy machine their seconds are not comparable; the bench
therefore also times a training step of each optimizer interleaved (--timing-rounds rounds of
--timing-steps steps each, alternating, median) and reports the time to reach the target as
steps x that per-step time, which a noisy neighbour slows alike for both.

Ends with one JSON line. --smoke: iliad-char on the Iliad's first 100 KB, 4 steps, evals every
2, one interleaved timing round of one step, in a temporary folder (the figures mean nothing).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import add_smoke_flag, json_line, machine

from lyre.data.corpus import prepare
from lyre.run.config import BUNDLED_ILIAD, load_config
from lyre.train.trainer import Trainer, train

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("shakespeare-char-cpu", "iliad-char")


def _corpus(paths: list[str]) -> list[Path]:
    """Preset corpus paths are relative to the repository root (where `make` runs)."""
    return [Path(p) if Path(p).is_absolute() else (REPO / p).resolve() for p in paths]


def _run(preset: str, data_dir: Path, out: Path, overrides: list[str], threads: int, args) -> dict:
    base = load_config(preset)
    budget = args.max_iters or base.train.max_iters
    config = load_config(preset, [
        f"data.data_dir={data_dir}", f"train.max_iters={budget}", f"train.lr_decay_iters={budget}",
        f"train.eval_interval={args.eval_interval}", "train.eval_windows=0", "train.final_eval=true",
        "train.log_interval=10", f"train.threads={threads}", *overrides,
    ])
    start = time.perf_counter()
    result = train(config, out, force=True, progress=False, plot=False)
    wall = time.perf_counter() - start
    tokens_per_step = config.train.batch_size * config.train.grad_accum * config.model.block_size
    seconds, elapsed, previous = {}, 0.0, 0  # training seconds up to each logged step
    for record in result.history:
        if "tokens_per_s" in record:
            elapsed += tokens_per_step * (record["step"] - previous) / record["tokens_per_s"]
            previous = record["step"]
            seconds[record["step"]] = elapsed
    evals = [(r["step"], r["val_loss"]) for r in result.history if "val_loss" in r]
    return {"evals": evals, "seconds": seconds, "final_val": result.val_loss, "train_s": elapsed,
            "wall_s": wall, "steps": budget}


def _step_seconds(preset: str, data_dir: Path, out: Path, lrs: list[float], args) -> dict[str, float]:
    """Median seconds per training step of AdamW and Muon, timed in alternation."""
    trainers = {}
    for name, overrides in [("adamw", ["train.optimizer=adamw"])] + [
        (f"muon-{lr:g}", ["train.optimizer=muon", f"train.muon_lr={lr}"]) for lr in lrs
    ]:
        config = load_config(preset, [
            f"data.data_dir={data_dir}", f"train.threads={args.threads}", *overrides])
        trainers[name] = Trainer(config, out / f"timing-{name}", resume=False, progress=False)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for trainer in trainers.values():  # warm up
        trainer.train_step()
    for r in range(args.timing_rounds):
        names = list(trainers)
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(args.timing_steps):
                trainers[name].train_step()
            times[name].append((time.perf_counter() - start) / args.timing_steps)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _reach(run: dict, target: float) -> tuple[int | None, float | None]:
    for step, val in run["evals"]:
        if val <= target + 1e-9:
            return step, run["seconds"].get(step)
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--max-iters", type=int, default=0, help="step budget (default: the preset's)")
    parser.add_argument("--eval-interval", type=int, default=100)
    parser.add_argument("--muon-lr", type=float, nargs="+", default=[0.02])
    parser.add_argument("--timing-only", action="store_true", help="only the interleaved step times")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing-steps", type=int, default=20)
    parser.add_argument("--timing-rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-optimizer")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        scratch = tempfile.TemporaryDirectory(prefix="lyre-bench-optimizer-")  # removed at exit
        args.preset, args.max_iters, args.eval_interval = ["iliad-char"], 4, 2
        args.timing_steps, args.timing_rounds, args.out = 1, 1, Path(scratch.name)
        excerpt = args.out / "iliad-100k.txt"
        excerpt.write_text(BUNDLED_ILIAD.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    print(f"machine: {machine()}", flush=True)

    report: dict = {"bench": "optimizer", "eval_interval": args.eval_interval, "presets": {},
                    "smoke": args.smoke}
    for preset in args.preset:
        base = load_config(preset)
        data_dir = args.out / preset / "data"
        if not (data_dir / "meta.json").exists():
            corpus = [excerpt] if args.smoke else _corpus(base.data.corpus)
            prepare(corpus, base.data.tokenizer, data_dir,
                    val_fraction=base.data.val_fraction)
        step_s = _step_seconds(preset, data_dir, args.out / preset, args.muon_lr, args)
        print(f"{preset}: seconds per step, interleaved: "
              + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in step_s.items()), flush=True)
        if args.timing_only:
            report["presets"][preset] = {"step_s": step_s}
            continue
        adamw = _run(preset, data_dir, args.out / preset / "adamw", ["train.optimizer=adamw"], args.threads, args)
        target = adamw["final_val"]
        print(f"{preset}: adamw  final val {target:.4f} after {adamw['steps']} steps, "
              f"{adamw['train_s']:.0f} s training", flush=True)
        entry = {"adamw": {k: adamw[k] for k in ("final_val", "steps", "train_s", "evals")}, "muon": [],
                 "step_s": step_s}
        for lr in args.muon_lr:
            muon = _run(preset, data_dir, args.out / preset / f"muon-{lr:g}",
                        ["train.optimizer=muon", f"train.muon_lr={lr}"], args.threads, args)
            step, seconds = _reach(muon, target)
            ratio = step * step_s[f"muon-{lr:g}"] / (adamw["steps"] * step_s["adamw"]) if step else None
            reached = (f"reaches {target:.4f} at step {step} ({seconds:.0f} s training, "
                       f"{step / adamw['steps']:.0%} of AdamW's steps, {seconds / adamw['train_s']:.0%} "
                       f"of its measured time, {ratio:.0%} by interleaved step times)") if step else "never reaches it"
            print(f"{preset}: muon lr {lr:g}  final val {muon['final_val']:.4f}, {reached}; "
                  f"{muon['train_s']:.0f} s training in all", flush=True)
            entry["muon"].append({"muon_lr": lr, "final_val": muon["final_val"], "steps_to_adamw": step,
                                  "s_to_adamw": seconds, "time_ratio_interleaved": ratio,
                                  "train_s": muon["train_s"], "evals": muon["evals"]})
        report["presets"][preset] = entry
    json_line(report)


if __name__ == "__main__":
    main()
