"""GPU training: lyre's step next to transformers' GPT2LMHeadModel, then the gpt2-124m recipe end to end.

    python bench/gpu_train.py [--batch 16] [--block 1024] [--vocab 50257] [--steps 10]
        [--rounds 3] [--warmup 5] [--no-compile] [--no-hf] [--recipe-minutes 3]
        [--no-recipe] [--gpt2-dir DIR] [--smoke]

One prepared script for a GPU machine, in two parts (about 10 minutes in all on one H100):

1. Speed, side by side (below).
2. The recipe, as a user runs it (docs/pretrain.md), each command a fresh process: a generated
   JSONL + parquet corpus (bench/prepare.py's generator, 0.25 GB) -> `lyre prepare ... --tokenizer
   gpt2:DIR --workers <cores> --json` -> `lyre train --config gpt2-124m --set data.data_dir=...`
   for about --recipe-minutes of training (the number of steps is worked out from part 1's
   tokens/s; the schedule is shortened to fit: warmup a tenth of the steps, cosine to 0 at the
   end). It prints the tokens/s and MFU that the trainer logged (metrics.jsonl, the first log
   interval left out: compilation) and the val loss of each evaluation. The corpus is a few MB
   of books resampled, so its val loss says the run learns, not how good a GPT-2 it makes.
   Without GPT-2's tokenizer files (--gpt2-dir, default ../shared/data/gpt2) it trains
   `bpe:50257` on the corpus instead and says so.

Part 1, both contenders in one run on one GPU:
* the same shape (GPT-2 124M: 12 layers, 768 dims, 12 heads, context 1024, vocabulary 50257, or
  --vocab 50304, nanoGPT's padded one) and the same initial weights (lyre's, copied into HF);
* bf16 autocast, TF32 for what stays in fp32, attention through PyTorch SDPA (flash kernels),
  AdamW(fused=True) with weight decay on matrices only, gradient clipping at 1.0, and
  torch.compile on both sides (--no-compile: both eager);
* the same random windows, drawn with lyre.data.corpus.get_batch and copied from pinned memory.
lyre runs its real training loop step, `Trainer.train_step` of a Trainer built the way
`lyre train` builds one (compile by default on CUDA, TF32, pinned non-blocking batches); HF runs
the equivalent step for GPT2LMHeadModel. After --warmup untimed steps each (compilation), they
take turns, --steps timed steps each per round for --rounds rounds; the median is reported.

MFU = tokens/s x training FLOPs per token (lyre.train.info: 6 N + 12 L T d, the same count for both
models: they are the same network) / the GPU's peak dense bf16 FLOP/s (lyre.train.mfu's table; set
LYRE_PEAK_FLOPS for a GPU it does not list). Goal: lyre >= 50% MFU on an H100/H200-class GPU,
and faster than transformers.

--smoke: a 2-layer model in fp32 on the CPU (eager), the same code at a size that takes
seconds (the recipe part: a 2 MB corpus, the char tokenizer, 4 steps of a tiny shape of the
preset), so the script
is checked on machines without a GPU (no figures).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import add_smoke_flag, json_line, machine, median

from lyre.core.devices import autocast_context
from lyre.data.corpus import get_batch
from lyre.model import GPTConfig
from lyre.run.config import DataConfig, RunConfig, TrainConfig
from lyre.tokenizers import build_tokenizer
from lyre.train.info import model_cost
from lyre.train.mfu import device_name, mfu, peak_flops
from lyre.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def synthetic_data(root: Path, vocab: int, n_tokens: int, seed: int) -> Path:
    """A prepared data directory of random tokens (speed does not depend on what they say)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dtype = "uint16" if vocab <= 1 << 16 else "uint32"
    counts = {"train": n_tokens, "val": max(4096, n_tokens // 100)}
    for split, n in counts.items():
        rng.integers(0, vocab, size=n).astype("<u2" if dtype == "uint16" else "<u4").tofile(root / f"{split}.bin")
    build_tokenizer("char", ["synthetic"]).save(root / "tokenizer")  # copied into the run, unused
    meta = {"dtype": dtype, "vocab_size": vocab, "train_tokens": counts["train"], "val_tokens": counts["val"],
            "tokenizer": "synthetic", "sources": [], "val_fraction": 0.01, "document_separator": None}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def lyre_trainer(args, shape: dict, data_dir: Path, run_dir: Path) -> Trainer:
    config = RunConfig(
        model=GPTConfig(n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
                        block_size=shape["block"], vocab_size=args.vocab, dropout=0.0, bias=True,
                        pos="learned", norm="layernorm", act="gelu", tie_embeddings=True),
        data=DataConfig(data_dir=str(data_dir)),
        # A constant lr (no warmup, far decay) keeps the schedule out of the picture.
        train=TrainConfig(batch_size=args.batch, grad_accum=1, max_iters=10**9, warmup_iters=0,
                          lr_decay_iters=10**9, eval_interval=10**9, device=args.device,
                          dtype=shape["dtype"], compile=None if shape["compile"] else False,
                          seed=args.seed, beta2=0.95, lr=6e-4),
    )
    return Trainer(config, run_dir, resume=False, progress=False)


class HFStep:
    """GPT2LMHeadModel trained the way lyre trains: same optimizer, clipping, autocast, data."""

    def __init__(self, model, trainer: Trainer, compile: bool) -> None:
        cfg = trainer.config.train
        self.device, self.cfg, self.tokens = trainer.device, cfg, trainer.task.train_tokens
        self.block = trainer.config.model.block_size
        self.model = model.to(self.device).train()
        self.forward = torch.compile(self.model) if compile else self.model
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=self.device.type == "cuda",
        )
        self.autocast = autocast_context(self.device, cfg.dtype)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    def __call__(self) -> float:
        x, y = get_batch(self.tokens, self.cfg.batch_size, self.block, self.generator, self.device)
        with self.autocast:
            # y is already shifted by one; shift_labels tells HF's loss not to shift again.
            loss = self.forward(input_ids=x, labels=y, shift_labels=y).loss
        loss.backward()
        value = loss.item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value


def lyre_step(trainer: Trainer):
    def step() -> float:
        loss = trainer.train_step()
        trainer.step += 1
        return loss

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed(args, shape: dict) -> dict:
    """Part 1: lyre's training step and transformers', in turns; the JSON record's speed keys."""
    with tempfile.TemporaryDirectory(prefix="lyre-gpu-bench-") as tmp:
        n_tokens = 20_000 if args.smoke else 5_000_000
        data_dir = synthetic_data(Path(tmp) / "data", args.vocab, n_tokens, args.seed)
        trainer = lyre_trainer(args, shape, data_dir, Path(tmp) / "run")
        device = trainer.device
        contenders = {}
        if not args.no_hf:
            from train_throughput import build_hf  # the same weights, Conv1D transposed

            contenders["hf"] = HFStep(build_hf(trainer.model, "sdpa"), trainer, shape["compile"])
        contenders["lyre"] = lyre_step(trainer)
        cost = model_cost(trainer.config.model)
        peak = peak_flops(device, torch.bfloat16 if shape["dtype"] == "bfloat16" else torch.float32)
        print(f"device:  {device_name(device)}; peak bf16 {peak / 1e12:.0f} TFLOP/s" if peak else
              f"device:  {device_name(device)}; peak unknown (MFU not reported)", flush=True)
        print(f"model:   {shape['n_layer']}L {shape['n_embd']}d {shape['n_head']}h, block {shape['block']}, "
              f"vocab {args.vocab}, {cost.total_params / 1e6:.1f}M parameters, "
              f"{cost.flops_per_token / 1e9:.3f} GFLOP per token; batch {args.batch}, {shape['dtype']}, "
              f"compile {'on' if trainer.compiled else 'off'} (lyre), {'on' if shape['compile'] else 'off'} (HF)",
              flush=True)

        first = {}
        for name, step in contenders.items():
            t0 = time.perf_counter()
            first[name] = step()
            for _ in range(args.warmup - 1):
                step()
            sync(device)
            print(f"warmup {name}: first loss {first[name]:.4f} ({time.perf_counter() - t0:.1f} s)", flush=True)
        if "hf" in first:
            print(f"first-step losses differ by {abs(first['hf'] - first['lyre']):.2e} "
                  f"(same weights and batch; ln V = {math.log(args.vocab):.4f})", flush=True)

        tokens_per_step = args.batch * shape["block"]
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                sync(device)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    contenders[name]()
                sync(device)
                rates[name].append(tokens_per_step * args.steps / (time.perf_counter() - t0))
            print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:,.0f} tok/s" for n in names), flush=True)

    record: dict = {"device": device_name(device), "batch": args.batch,
                    "block": shape["block"], "vocab": args.vocab, "dtype": shape["dtype"],
                    "compile": shape["compile"], "peak_flops": peak}
    print()
    for name in names:
        tok_s = median(rates[name])
        used = mfu(tok_s, cost.flops_per_token, peak)
        record[f"{name}_tok_s"] = round(tok_s)
        record[f"{name}_mfu"] = None if used is None else round(used, 4)
        print(f"{name:<6} {tok_s:>12,.0f} tok/s" + (f"   MFU {used:.1%}" if used is not None else ""))
    if "hf" in rates:
        record["lyre_vs_hf_ratio"] = round(median([a / b for a, b in zip(rates["lyre"], rates["hf"], strict=True)]), 3)
        print(f"lyre / HF: {record['lyre_vs_hf_ratio']:.3f} (median of per-round ratios)")
    if device.type == "cuda":
        record["max_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    return record


# ----------------------------------------------------------------------------------------------
# Part 2: the recipe, as a user runs it

RECIPE_TOKENS_PER_STEP = 12 * 1024 * 40  # the gpt2-124m preset's optimizer step
SMOKE_SHAPE = ["n_layer=2", "n_head=2", "n_embd=64", "block_size=64", "train.batch_size=4",
               "train.grad_accum=1", "train.device=cpu", "train.eval_windows=4", "train.threads=1"]


def lyre_cli(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    """`lyre ARGS` in a fresh process (this checkout's lyre first on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "lyre", *args], env=env, text=True,
                          stdout=subprocess.PIPE if capture else None)
    if check and proc.returncode != 0:
        sys.exit(f"`lyre {' '.join(args[:3])} ...` failed with exit code {proc.returncode}")
    return proc


def recipe_steps(args, tok_s: float | None) -> int:
    """Steps that fill about --recipe-minutes at the measured speed (compilation aside)."""
    if args.smoke:
        return 4
    if args.recipe_steps:
        return args.recipe_steps
    if not tok_s:
        return 100
    return max(20, int(args.recipe_minutes * 60 * tok_s / RECIPE_TOKENS_PER_STEP))


def recipe(args, tok_s: float | None) -> dict:
    """Generated corpus -> lyre prepare -> lyre train --config gpt2-124m; what the run logged."""
    from prepare import write_corpus  # bench/prepare.py's seeded JSONL + parquet generator

    work = Path(tempfile.mkdtemp(prefix="lyre-gpu-recipe-"))
    try:
        gb = 0.002 if args.smoke else args.recipe_gb
        files = write_corpus(work / "corpus", int(gb * 1e9), args.seed)
        if args.smoke:
            tokenizer = "char"  # seconds, not the 50,257 logits of GPT-2's vocabulary
        elif (args.gpt2_dir / "encoder.json").is_file():
            tokenizer = f"gpt2:{args.gpt2_dir}"
        else:
            tokenizer = "bpe:50257"
            print(f"recipe:  no GPT-2 tokenizer files in {args.gpt2_dir}; tokenizer {tokenizer} instead", flush=True)
        t0 = time.perf_counter()
        out = lyre_cli("prepare", str(files[0].parent), "--tokenizer", tokenizer, "--out", str(work / "data"),
                       "--workers", str(1 if args.smoke else os.cpu_count() or 1), "--json", capture=True)
        prepared = json.loads(out.stdout.strip().splitlines()[-1])
        prepare_s = time.perf_counter() - t0
        print(f"recipe:  lyre prepare: {prepared['documents']:,} documents, {prepared['tokens']:,} tokens "
              f"in {prepare_s:.0f} s", flush=True)

        steps = recipe_steps(args, tok_s)
        overrides = [f"data.data_dir={work / 'data'}", f"train.max_iters={steps}",
                     f"train.warmup_iters={max(1, steps // 10)}", f"train.eval_interval={max(1, steps // 4)}",
                     "train.final_eval=false", "train.log_interval=1" if args.smoke else "train.log_interval=10"]
        if args.smoke:
            overrides += SMOKE_SHAPE
        per_step = "a tiny shape" if args.smoke else f"{RECIPE_TOKENS_PER_STEP:,} tokens"
        print(f"recipe:  lyre train --config gpt2-124m, {steps} steps of {per_step} "
              f"(--set {' --set '.join(overrides)})", flush=True)
        t0 = time.perf_counter()
        lyre_cli("train", "--config", "gpt2-124m", *[x for o in overrides for x in ("--set", o)],
                 "--out", str(work / "run"), "--no-progress")
        train_s = time.perf_counter() - t0
        records = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    logs = [r for r in records if "tokens_per_s" in r]
    evals = [r for r in records if "val_loss" in r]
    steady = logs[1:] or logs  # the first log interval holds compilation
    result = {"recipe_steps": steps, "recipe_prepare_tokens": prepared["tokens"],
              "recipe_prepare_s": round(prepare_s, 1), "recipe_train_s": round(train_s, 1),
              "recipe_tok_s": round(median([r["tokens_per_s"] for r in steady])),
              "recipe_val_losses": [[r["step"], round(r["val_loss"], 4)] for r in evals],
              "recipe_val_loss": round(evals[-1]["val_loss"], 4) if evals else None}
    mfus = [r["mfu"] for r in steady if "mfu" in r]
    result["recipe_mfu"] = round(median(mfus), 4) if mfus else None
    print(f"recipe:  {result['recipe_tok_s']:,} tok/s"
          + (f", MFU {result['recipe_mfu']:.1%}" if result["recipe_mfu"] is not None else ", MFU not known here")
          + " (median of the logged intervals after the first); val loss "
          + ", ".join(f"{loss:.3f} at step {step}" for step, loss in result["recipe_val_losses"])
          + f"; {train_s:.0f} s in `lyre train` (start-up and compilation included)", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=50257, help="50257 (GPT-2) or 50304 (padded)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per contender per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    parser.add_argument("--no-compile", action="store_true", help="eager on both sides")
    parser.add_argument("--no-hf", action="store_true", help="time lyre only")
    parser.add_argument("--no-recipe", action="store_true", help="part 1 only")
    parser.add_argument("--recipe-minutes", type=float, default=3.0,
                        help="training time of the recipe part, about (default 3)")
    parser.add_argument("--recipe-steps", type=int, default=0, help="steps of the recipe part (default: from the minutes)")
    parser.add_argument("--recipe-gb", type=float, default=0.25, help="generated corpus size (default 0.25)")
    parser.add_argument("--gpt2-dir", type=Path, default=ROOT.parent / "shared" / "data" / "gpt2")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=1337)
    add_smoke_flag(parser)
    args = parser.parse_args(argv)

    shape = dict(n_layer=12, n_head=12, n_embd=768, block=args.block, dtype="bfloat16",
                 compile=not args.no_compile)
    if args.smoke:
        shape.update(n_layer=2, n_head=2, n_embd=64, block=64, dtype="float32", compile=False)
        args.device, args.vocab, args.batch = "cpu", 512, 4
        args.steps, args.rounds, args.warmup = min(args.steps, 2), min(args.rounds, 2), 1
    elif not torch.cuda.is_available() and args.device.startswith("cuda"):
        sys.exit("bench/gpu_train.py needs a CUDA GPU (or --smoke for a CPU smoke test)")
    warnings.filterwarnings("ignore", module="transformers")
    print(f"machine: {machine()}", flush=True)

    record: dict = {"bench": "gpu_train", "smoke": args.smoke, **speed(args, shape)}
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # part 2 trains in another process: give its memory back
    if not args.no_recipe:
        record.update(recipe(args, record.get("lyre_tok_s")))
    json_line(record)
    return record


if __name__ == "__main__":
    main()
