"""GPU training speed: lyre next to Hugging Face transformers' GPT2LMHeadModel, GPT-2 124M, bf16.

    python bench/gpu_train.py [--batch 16] [--block 1024] [--vocab 50257] [--steps 10]
        [--rounds 3] [--warmup 5] [--no-compile] [--smoke]

Both contenders, in one run on one GPU:
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
seconds, so the script is checked on machines without a GPU (no figures).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
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

    record: dict = {"bench": "gpu_train", "device": device_name(device), "batch": args.batch,
                    "block": shape["block"], "vocab": args.vocab, "dtype": shape["dtype"],
                    "compile": shape["compile"], "peak_flops": peak, "smoke": args.smoke}
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
    json_line(record)
    return record


if __name__ == "__main__":
    main()
