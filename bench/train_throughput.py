"""Training throughput: lyre's training step next to Hugging Face transformers' GPT2LMHeadModel.

    python bench/train_throughput.py [--shape small|gpt2-124m] [--batch B] [--block T]
        [--vocab V] [--steps 3] [--rounds 5] [--warmup 2] [--threads N] [--eager] [--compile]
        [--smoke]

Both sides get the identical model: the GPT-2 options of lyre's GPT (learned positions,
LayerNorm, GELU tanh, biases, tied head, no dropout) and a GPT2LMHeadModel of the same shape
holding a copy of the SAME initial weights (Conv1D keeps [in, out], so those are transposed).
Both draw the same random windows of the same token file with `lyre.data.corpus.get_batch` from
equally seeded generators, run AdamW with the same hyperparameters and parameter groups (weight
decay on matrices only) and clip gradients to 1.0, on the same number of torch threads.

* lyre: a real `lyre.train.trainer.Trainer` (over a data directory of random tokens) and its
  `train_step`, exactly what `lyre train` runs: optimizer from `make_optimizer`, fp32 on the CPU,
  torch.compile as train.compile's default says (off on the CPU; --compile adds a compiled run).
* HF: the same step written for GPT2LMHeadModel (labels shifted by us, passed as
  `shift_labels`), with the optimizer its Trainer picks by default (for torch >= 2.8:
  "adamw_torch_fused", i.e. torch.optim.AdamW(fused=True)); attention "sdpa" (its default) and,
  with --eager, also "eager".

After `--warmup` untimed steps each, the contenders run in turn, `--steps` timed steps each, for
`--rounds` rounds, the order rotating every round, so a noisy neighbour slows them all alike.
tokens/s = batch * block * steps / seconds. The headline ratio is the median over rounds of
lyre/HF(sdpa) measured in the same round; the same ratio in tokens per CPU-second of the process
is printed beside it, as a check that is less sensitive to other jobs on the machine. Sanity check: the first step's losses (same weights,
same batch) must agree within 1e-4.

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import transformers
from _common import add_smoke_flag, json_line, machine, median
from transformers import GPT2Config, GPT2LMHeadModel

from lyre.data.corpus import get_batch
from lyre.model import GPT, GPTConfig
from lyre.run.config import DataConfig, RunConfig, TrainConfig
from lyre.train.trainer import Trainer

SHAPES = {
    # A small GPT-2 (nanoGPT's shakespeare-char shape) with the bpe:8192 vocabulary; a step takes
    # a few seconds on a 2-core CPU.
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192, batch=8),
    # GPT-2 124M itself (slow on CPU: tens of seconds per step on 2 cores).
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, batch=4),
    # --smoke: the same code at a size that takes milliseconds per step.
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=256, batch=2),
}


def write_data(directory: Path, vocab_size: int, seed: int, n_tokens: int = 200_000) -> Path:
    """A prepared data directory of random tokens (throughput does not depend on the text)."""
    dtype = "uint16" if vocab_size <= 65536 else "uint32"
    (directory / "tokenizer").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    counts = {"train": n_tokens, "val": n_tokens // 10}
    for split, n in counts.items():
        rng.integers(0, vocab_size, size=n).astype(dtype).tofile(directory / f"{split}.bin")
    meta = {"dtype": dtype, "vocab_size": vocab_size, "train_tokens": counts["train"],
            "val_tokens": counts["val"], "tokenizer": "random", "sources": [], "val_fraction": 0.1}
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def lyre_trainer(shape: dict, data_dir: Path, run_dir: Path, seed: int, compile: bool) -> Trainer:
    """lyre's real Trainer, GPT-2 options, lyre's default optimizer settings, constant lr."""
    model = GPTConfig(
        n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
        block_size=shape["block_size"], vocab_size=shape["vocab_size"], dropout=0.0, bias=True,
        pos="learned", norm="layernorm", act="gelu", tie_embeddings=True,
    )
    # lyre's defaults: AdamW, lr 1e-3, betas (0.9, 0.99), weight decay 0.1, clip 1.0. No warmup
    # and a far decay horizon keep the learning rate constant.
    train = TrainConfig(batch_size=shape["batch"], grad_accum=1, warmup_iters=0, max_iters=10**9,
                        lr_decay_iters=10**9, device="cpu", seed=seed, compile=compile)
    config = RunConfig(model=model, data=DataConfig(data_dir=str(data_dir)), train=train)
    return Trainer(config, run_dir, resume=False, progress=False)


class LyreStep:
    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def __call__(self) -> float:
        loss = self.trainer.train_step()  # lyre's own step, exactly as `lyre train` runs it
        self.trainer.step += 1
        return loss


def build_hf(ours: GPT, attn: str) -> GPT2LMHeadModel:
    c = ours.config
    config = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
        n_head=c.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=True, use_cache=False,
        bos_token_id=None, eos_token_id=None, attn_implementation=attn,
    )
    model = GPT2LMHeadModel(config)
    assert model.config._attn_implementation == attn, model.config._attn_implementation
    copy_weights(ours, model)
    return model


def copy_weights(ours: GPT, hf: GPT2LMHeadModel) -> None:
    """lyre's parameter names are GPT-2's; HF's Conv1D stores [in, out], nn.Linear [out, in]."""
    theirs = hf.state_dict()
    with torch.no_grad():
        for name, tensor in ours.state_dict().items():
            if name == "lm_head.weight":
                continue  # tied to transformer.wte.weight on both sides
            target = theirs[name]
            is_conv1d = name.endswith(".weight") and any(
                k in name for k in ("c_attn", "c_proj", "c_fc")
            )
            source = tensor.t() if is_conv1d else tensor
            if target.shape != source.shape:
                raise RuntimeError(f"{name}: HF {tuple(target.shape)} vs lyre {tuple(source.shape)}")
            target.copy_(source)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr(), "HF head not tied"


class HFStep:
    """The same step for GPT2LMHeadModel, with the optimizer HF's Trainer would create."""

    def __init__(self, model: GPT2LMHeadModel, tokens: np.ndarray, cfg: TrainConfig):
        self.model, self.tokens, self.cfg = model.train(), tokens, cfg
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        # transformers' TrainingArguments.optim defaults to "adamw_torch_fused" for torch >= 2.8.
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True,
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.block = model.config.n_positions

    def __call__(self) -> float:
        cfg = self.cfg
        x, y = get_batch(self.tokens, cfg.batch_size, self.block, self.generator, "cpu")
        # y is already shifted by one; shift_labels tells HF's loss not to shift again.
        loss = self.model(input_ids=x, labels=y, shift_labels=y).loss
        loss.backward()
        value = loss.item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--batch", type=int, help="sequences per step (default: the shape's)")
    parser.add_argument("--block", type=int, help="tokens per sequence (default: the shape's)")
    parser.add_argument("--vocab", type=int, help="vocabulary size (default: the shape's)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per contender per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of interleaved timing")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--eager", action="store_true", help="also time HF with eager attention")
    parser.add_argument("--compile", action="store_true",
                        help="also time lyre with train.compile=true (torch.compile, inductor)")
    parser.add_argument("--seed", type=int, default=1337)
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.shape, args.steps, args.rounds, args.warmup, args.threads = "tiny", 1, 2, 1, 1

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = dict(SHAPES[args.shape])
    for key, value in (("batch", args.batch), ("block_size", args.block), ("vocab_size", args.vocab)):
        if value:
            shape[key] = value
    shape_name = (f"{args.shape}: {shape['n_layer']}L {shape['n_embd']}d {shape['n_head']}h "
                  f"block {shape['block_size']} vocab {shape['vocab_size']} batch {shape['batch']}")
    print(f"machine: {machine()}")
    print(f"shape:   {shape_name}")
    warnings.filterwarnings("ignore", module="transformers")
    transformers.logging.set_verbosity_error()

    with tempfile.TemporaryDirectory(prefix="lyre-bench-") as tmp:
        data_dir = write_data(Path(tmp) / "data", shape["vocab_size"], args.seed)
        trainer = lyre_trainer(shape, data_dir, Path(tmp) / "run", args.seed, compile=None)
        cfg = trainer.config.train
        contenders: dict[str, object] = {}
        # HF copies lyre's initial weights before anyone trains.
        tokens = trainer.task.train_tokens  # the task holds the data since the trainer took tasks
        contenders["hf_sdpa"] = HFStep(build_hf(trainer.model, "sdpa"), tokens, cfg)
        if args.eager:
            contenders["hf_eager"] = HFStep(build_hf(trainer.model, "eager"), tokens, cfg)
        if args.compile:
            twin = lyre_trainer(shape, data_dir, Path(tmp) / "run-compiled", args.seed, compile=True)
            contenders["lyre_compiled"] = LyreStep(twin)
        contenders["lyre"] = LyreStep(trainer)
        return measure(contenders, shape, shape_name, args)


def measure(contenders: dict, shape: dict, shape_name: str, args) -> dict:
    # Warmup; the first step of every contender sees the same weights and the same batch.
    first: dict[str, float] = {}
    for name, step in contenders.items():
        t0 = time.perf_counter()
        first[name] = step()
        for _ in range(args.warmup - 1):
            step()
        print(f"warmup {name}: first loss {first[name]:.6f} ({time.perf_counter() - t0:.1f}s)")
    loss_diff = max(abs(v - first["lyre"]) for v in first.values())
    print(f"first-step loss: max |difference| = {loss_diff:.2e} "
          f"(at init about ln V = {math.log(shape['vocab_size']):.4f})")
    if loss_diff > 1e-4:
        print("WARNING: the models disagree on the first step: the comparison is not like for like")

    tokens_per_step = shape["batch"] * shape["block_size"]
    names = list(contenders)
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu_rates: dict[str, list[float]] = {name: [] for name in names}  # tokens per CPU-second
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            step = contenders[name]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            rates[name].append(tokens_per_step * args.steps / (time.perf_counter() - t0))
            cpu_rates[name].append(tokens_per_step * args.steps / (time.process_time() - c0))
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:,.0f}" for n in names) + " tok/s",
              flush=True)

    def paired(values: dict[str, list[float]], a: str, b: str = "hf_sdpa") -> float:
        return median([x / y for x, y in zip(values[a], values[b], strict=True)])

    print()
    print(f"{'contender':<15}{'median tok/s':>14}{'best tok/s':>12}{'vs hf_sdpa':>12}"
          f"{'(CPU time)':>12}")
    for name in names:
        print(f"{name:<15}{median(rates[name]):>14,.0f}{max(rates[name]):>12,.0f}"
              f"{paired(rates, name):>12.3f}{paired(cpu_rates, name):>12.3f}")
    ratio = paired(rates, "lyre")
    print(f"\ntrain_vs_hf_ratio (lyre / HF sdpa, median of the per-round ratios): {ratio:.3f}"
          f"  (goal >= 1.2)")
    record = {
        "bench": "train_throughput",
        "train_vs_hf_ratio": round(ratio, 3),
        "lyre_tok_s": round(median(rates["lyre"])),
        "hf_tok_s": round(median(rates["hf_sdpa"])),
        "shape": shape_name,
        "threads": torch.get_num_threads(),
        "first_step_loss_diff": float(f"{loss_diff:.1e}"),
        "cpu_time_ratio": round(paired(cpu_rates, "lyre"), 3),
        "smoke": args.smoke,
    }
    if "hf_eager" in contenders:
        record["hf_eager_tok_s"] = round(median(rates["hf_eager"]))
        record["vs_hf_eager_ratio"] = round(paired(rates, "lyre", "hf_eager"), 3)
    if "lyre_compiled" in contenders:
        record["lyre_compiled_tok_s"] = round(median(rates["lyre_compiled"]))
        record["compiled_vs_hf_ratio"] = round(paired(rates, "lyre_compiled"), 3)
    json_line(record)
    return record


if __name__ == "__main__":
    main()
