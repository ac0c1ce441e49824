"""One LoRA training step: lyre's LoRA next to Hugging Face PEFT's on a GPT2LMHeadModel.

    python bench/lora_peft.py [--shape small|gpt2-124m] [--rank 8] [--targets attn,mlp]
        [--batch B] [--block T] [--steps 3] [--rounds 5] [--warmup 2] [--threads N] [--smoke]

Both sides hold the same base weights (lyre's GPT with GPT-2 options, copied into a
GPT2LMHeadModel; Conv1D transposed) and the same adapters: rank r, alpha 2r, no dropout, on the
same layers (default: attention c_attn + c_proj and MLP c_fc + c_proj), B = 0 at the start so
the first losses must agree. Each side trains only its adapters with fused AdamW, the same
hyperparameters and parameter groups, and clips gradients to 1.0, on the same torch threads.

* lyre: `lyre.finetune.lora.apply_lora` on the model, then the real `lyre.train.trainer.Trainer` and its
  `train_step` (what `lyre finetune --lora-rank R` runs), over random tokens.
* PEFT: `peft.get_peft_model(GPT2LMHeadModel, LoraConfig(...))`, the same step written out with
  `torch.optim.AdamW(fused=True)` over the trainable parameters (what HF's Trainer would build).

Timing as bench/train_throughput.py: warmup, then rounds of `--steps` steps per side in turn,
the order rotating. lora_step_time_ratio = median over rounds of (PEFT's step time / lyre's),
i.e. lyre's speed relative to PEFT's: higher is better, the goal is >= 1.0. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers
from _common import add_smoke_flag, json_line, machine, median
from train_throughput import SHAPES, build_hf, lyre_trainer, write_data

from lyre.data.corpus import get_batch
from lyre.finetune.lora import LoRAConfig, apply_lora, count_parameters


class PeftStep:
    def __init__(self, model, tokens, cfg) -> None:
        self.model, self.tokens, self.cfg = model.train(), tokens, cfg
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": cfg.weight_decay},
             {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
        self.params = trainable
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.block = model.config.n_positions

    def __call__(self) -> float:
        x, y = get_batch(self.tokens, self.cfg.batch_size, self.block, self.generator, "cpu")
        loss = self.model(input_ids=x, labels=y, shift_labels=y).loss
        loss.backward()
        value = loss.item()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value


class LyreStep:
    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def __call__(self) -> float:
        loss = self.trainer.train_step()
        self.trainer.step += 1
        return loss


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default="attn,mlp", help="lyre target names, comma-separated")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--block", type=int)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1337)
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:  # train_throughput's tiny shape, one step per round
        args.shape, args.rank, args.steps, args.rounds, args.warmup, args.threads = "tiny", 2, 1, 2, 1, 1
    import peft

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = dict(SHAPES[args.shape])
    for key, value in (("batch", args.batch), ("block_size", args.block)):
        if value:
            shape[key] = value
    shape_name = (f"{args.shape}: {shape['n_layer']}L {shape['n_embd']}d {shape['n_head']}h block "
                  f"{shape['block_size']} vocab {shape['vocab_size']} batch {shape['batch']}, LoRA rank "
                  f"{args.rank} on {args.targets}")
    print(f"machine: {machine()}")
    print(f"shape:   {shape_name}")
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()

    with tempfile.TemporaryDirectory(prefix="lyre-bench-") as tmp:
        data_dir = write_data(Path(tmp) / "data", shape["vocab_size"], args.seed)
        # The base model: lyre's trainer builds it from the seed; its weights go to HF first.
        base = lyre_trainer(shape, data_dir, Path(tmp) / "base", args.seed, compile=None)
        hf = build_hf(base.model, "sdpa")
        lora = LoRAConfig(rank=args.rank, alpha=2.0 * args.rank, targets=args.targets.split(","))
        model = base.model
        names = apply_lora(model, lora)
        from lyre.train.trainer import Trainer

        trainer = Trainer(base.config, Path(tmp) / "lora", model=model, progress=False)
        cfg = trainer.config.train
        peft_config = peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                      target_modules=names, fan_in_fan_out=True, bias="none")
        theirs = peft.get_peft_model(hf, peft_config)
        ours_params, theirs_params = count_parameters(model)[0], theirs.get_nb_trainable_parameters()[0]
        print(f"trainable parameters: lyre {ours_params:,}, PEFT {theirs_params:,}")
        assert ours_params == theirs_params, "the two sides do not train the same adapters"
        contenders = {"peft": PeftStep(theirs, trainer.task.train_tokens, cfg), "lyre": LyreStep(trainer)}
        return measure(contenders, shape, shape_name, args, ours_params)


def measure(contenders: dict, shape: dict, shape_name: str, args, trainable: int) -> dict:
    first = {}
    for name, step in contenders.items():
        t0 = time.perf_counter()
        first[name] = step()
        for _ in range(args.warmup - 1):
            step()
        print(f"warmup {name}: first loss {first[name]:.6f} ({time.perf_counter() - t0:.1f}s)")
    loss_diff = abs(first["lyre"] - first["peft"])
    print(f"first-step loss |difference| = {loss_diff:.2e} (ln V = {math.log(shape['vocab_size']):.4f})")
    names = list(contenders)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % 2:] + names[:r % 2]:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                contenders[name]()
            seconds[name].append((time.perf_counter() - t0) / args.steps)
        print(f"round {r + 1}: " + ", ".join(f"{n} {1000 * seconds[n][-1]:.0f} ms/step" for n in names),
              flush=True)
    ratio = median([p / ly for p, ly in zip(seconds["peft"], seconds["lyre"], strict=True)])
    print(f"\nlyre {1000 * median(seconds['lyre']):.0f} ms/step, PEFT {1000 * median(seconds['peft']):.0f} "
          f"ms/step; lora_step_time_ratio (PEFT time / lyre time, higher is better): {ratio:.3f} (goal >= 1.0)")
    record = {
        "bench": "lora_peft", "shape": shape_name, "rank": args.rank, "trainable_params": trainable,
        "lyre_ms_per_step": round(1000 * median(seconds["lyre"]), 1),
        "peft_ms_per_step": round(1000 * median(seconds["peft"]), 1),
        "first_loss_diff": loss_diff, "threads": torch.get_num_threads(),
        "peft_version": __import__("peft").__version__, "lora_step_time_ratio": round(ratio, 3),
        "smoke": args.smoke,
    }
    json_line(record)
    return record


if __name__ == "__main__":
    main()
