"""From a base model to an assistant on one CPU: what fine-tuning buys, measured.

    python bench/finetune.py [--work DIR] [--pretrain-steps 800] [--threads 2] [--smoke]
        [--data ../shared/data/instruction-data.json]
        [--preference ../shared/data/instruction-data-with-preference.json]

1. Pretrain a small BPE model here (`lyre train`: 4 layers, 128 wide, context 256, bpe:2048) on
   the public-domain corpora of shared/data (Iliad, Tiny Shakespeare, The Verdict, Sherlock
   Holmes).
2. Fine-tune it on the book's 1,100 instructions (85/10/5 split, alpaca template, the defaults of
   `lyre finetune` except the learning rate and the epochs: --lr-full 1e-3, --lr-lora 1e-2,
   --epochs 4, chosen for this small model with --sweep, see docs/finetune.md) four ways, each in
   its own process:
       (a) full, answers-only loss, from the pretrained model
       (b) the same from random init (same tokenizer and shape)
       (c) full, loss on prompt and answer (train_on_prompt), from the pretrained model
       (d) LoRA rank 8 (attn + mlp), answers-only loss, from the pretrained model
   Each reports the val loss on the held-out answers (the same quantity for all four: the mask
   only changes what is trained), trainable parameters, the median step time and the peak
   resident memory of its process.
3. The acceptance check: run (a) answers the 55 test prompts with the engine (greedy); the
   answers that end with the model's own <|endoftext|> (no stop string, no length limit) are
   counted, and the first 10 test prompts go through `lyre chat RUN -p` as a user types them (the
   run's template, no flags, greedy): each must answer, end with the model's own <|endoftext|>
   and have no "### Instruction" continuation.
4. DPO (LoRA rank 8, the `dpo` defaults) from run (a) on the 1,100 preference pairs: held-out
   preference accuracy before and after, as the implicit reward's (0.5 before by definition) and
   as the plain likelihood preference log p(chosen) > log p(rejected).
5. Ten test prompts answered before (the pretrained model, alpaca prompt) and after (run a),
   written to WORK/samples.md.
6. LoRA against full fine-tuning where memory shows: a few training steps of a GPT-2 124M-shaped
   model (random weights, batch 4 x 256), full and LoRA rank 8, each in its own process: step
   time and peak resident memory.

Ends with one JSON line. Minutes, not hours, on a 2-core CPU. --smoke: every step above (but 6)
at tiny sizes in a temporary folder: 4 pretraining steps on The Verdict with a 512-token BPE, the
first 120 instructions and preference pairs, 2 steps per fine-tune (only the first in a process
of its own), 8-token answers, one `lyre chat` prompt, two samples (the figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_smoke_flag, json_line, machine, median

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
CORPORA = ["iliad.txt", "tinyshakespeare.txt", "the-verdict.txt", "rag/sherlock_holmes_pg1661.txt"]

PRETRAIN_TOML = """\
[model]
n_layer = 4
n_head = 4
n_embd = 128
block_size = 256
dropout = 0.0

[data]
corpus = {corpus}
tokenizer = "{tokenizer}"

[train]
batch_size = 8
max_iters = {steps}
lr = 2e-3
min_lr = 2e-4
warmup_iters = {warmup}
eval_interval = {steps}
eval_windows = 32
log_interval = 50
device = "cpu"
threads = {threads}
seed = 1337
"""


# ----------------------------------------------------------------------------------------------
# Children: each fine-tune in its own process (its own peak memory)


def child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from lyre.finetune.command import finetune
    from lyre.finetune.lora import count_parameters

    t0 = time.perf_counter()
    result = finetune(spec["base"], spec["data"], spec["out"], task=spec.get("task"),
                      lora_rank=spec.get("lora_rank"), overrides=spec["overrides"], progress=False,
                      force=True, quiet=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    prepared = result.prepared
    prepared.report = lambda line: None
    trainable, total = count_parameters(prepared.build_model(prepared.config))
    records = [json.loads(line) for line in (Path(spec["out"]) / "metrics.jsonl").read_text().splitlines()]
    steps = [r["ms_per_step"] for r in records if "ms_per_step" in r]
    evals = [r for r in records if "val_loss" in r]
    return {"val_loss": evals[-1]["val_loss"], "best_val_loss": min(r["val_loss"] for r in evals),
            "steps": result.train.step, "ms_per_step": median(steps), "trainable": trainable,
            "total": total, "peak_rss_mb": round(peak), "wall_s": round(wall, 1),
            "adapter_bytes": result.adapter_bytes, "last_eval": evals[-1]}


def scale_child(spec: dict) -> dict:
    """A few training steps of a GPT-2 124M-shaped model, full or LoRA: step time, peak memory."""
    import tempfile

    import torch

    torch.set_num_threads(spec["threads"])
    from train_throughput import SHAPES, lyre_trainer, write_data

    from lyre.finetune.lora import LoRAConfig, apply_lora, count_parameters
    from lyre.train.trainer import Trainer

    shape = {**SHAPES["gpt2-124m"], "block_size": 256, "batch": 4}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp) / "data", shape["vocab_size"], 1)
        trainer = lyre_trainer(shape, data, Path(tmp) / "full", 1, compile=None)
        if spec["lora_rank"]:
            apply_lora(trainer.model, LoRAConfig(rank=spec["lora_rank"], alpha=2.0 * spec["lora_rank"]))
            trainer = Trainer(trainer.config, Path(tmp) / "lora", model=trainer.model, progress=False)
        times = []
        for _ in range(spec["steps"]):
            t0 = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - t0)
        trainable = count_parameters(trainer.model)[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms_per_step": round(1000 * median(times[1:])), "peak_rss_mb": round(peak),
            "trainable": trainable}


def run_child(spec: dict, log: Path, in_process: bool = False) -> dict:
    if in_process:  # --smoke: the same function without starting Python again (seconds each)
        return scale_child(spec) if spec.get("scale") else child(spec)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'bench'}"}
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                              stdout=subprocess.PIPE, stderr=f, text=True)
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}); see {log}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Pieces run in this process


def pretrain(work: Path, steps: int, threads: int, smoke: bool = False) -> dict:
    out = work / "pretrain"
    corpus = json.dumps([str(DATA / name) for name in (["the-verdict.txt"] if smoke else CORPORA)])
    toml = work / "pretrain.toml"
    toml.write_text(PRETRAIN_TOML.format(corpus=corpus, steps=steps, warmup=max(1, steps // 20),
                                         threads=threads, tokenizer="bpe:512" if smoke else "bpe:2048"))
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "lyre", "train", "--config", str(toml), "--out", str(out),
                    "--force", "--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            if "val_loss" in line][-1]
    return {"run": out, "val_loss": last["val_loss"], "wall_s": round(time.perf_counter() - t0, 1)}


def random_init_copy(pretrained: Path, out: Path) -> Path:
    """The pretrained run's tokenizer and shape with freshly initialised weights."""
    import torch

    from lyre.model import build_model
    from lyre.run import checkpoint as ckpt
    from lyre.run.config import config_from_json

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(pretrained, out, ignore=shutil.ignore_patterns("checkpoints", "data"))
    torch.manual_seed(1337)
    model = build_model(config_from_json(out / "config.json").model)
    ckpt.save_checkpoint(out, "best", model=model, optimizer=None, state={"step": 0})
    return out


def chat_check(run: Path, entries: list[dict]) -> list[dict]:
    """Each test prompt through `lyre chat RUN -p` as typed (the run's own template, greedy).

    ok: an answer, no "###" in it, and the model ended it itself: it is the engine's greedy
    answer to the same prompt in responses.json, which stopped at its own <|endoftext|> (not at a
    stop string, not at a length limit)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = []
    for entry in entries:
        proc = subprocess.run([sys.executable, "-m", "lyre", "chat", str(run), "-p", entry["prompt"],
                               "--temperature", "0", "--max-new-tokens", "256"],
                              capture_output=True, text=True, env=env)
        answer = proc.stdout.strip()
        ok = (proc.returncode == 0 and bool(answer) and "###" not in answer and entry["stopped"]
              and answer == entry["response"])
        out.append({"prompt": entry["prompt"], "answer": answer, "ok": ok})
    return out


def preference_accuracies(run: Path, pairs) -> float:
    """Fraction of pairs with log p(chosen) > log p(rejected) under the run's model."""
    import torch

    from lyre.finetune.dpo import answer_logprobs, pair_batch
    from lyre.generate.runs import load_run

    model = load_run(run, "best", "cpu", for_inference=False).model
    wins = 0.0
    with torch.no_grad():
        for start in range(0, len(pairs), 8):
            chunk = pairs[start:start + 8]
            x, y = pair_batch(chunk, 0, "cpu")
            logp = answer_logprobs(model, x.view(-1, x.size(-1)), y.view(-1, y.size(-1))).view(-1, 2)
            wins += ((logp[:, 0] > logp[:, 1]).float() + 0.5 * (logp[:, 0] == logp[:, 1]).float()).sum().item()
    return wins / len(pairs)


def samples(base: Path, tuned: Path, work: Path, n: int = 10) -> Path:
    from lyre.chat.templates import get_template
    from lyre.finetune.records import read_records
    from lyre.finetune.responses import generate_responses
    from lyre.generate.runs import load_run

    test, _ = read_records(tuned / "data" / "test.jsonl")
    test = test[:n]
    template = get_template("alpaca")
    before = generate_responses(load_run(base, "best", "cpu"), template, test, max_new_tokens=60)
    after = json.loads((tuned / "responses.json").read_text())["responses"][:n]
    lines = ["| prompt | before (pretrained) | after (fine-tuned, run a) |", "|---|---|---|"]

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ").strip()[:200] or "(empty)"

    for b, a in zip(before, after, strict=True):
        lines.append(f"| {cell(a['prompt'])} | {cell(b['response'])} | {cell(a['response'])} |")
    path = work / "samples.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def first_records(path: Path, n: int, out: Path) -> Path:
    """The first n records of a JSON list file, written to out (--smoke's small data sets)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8"))[:n]), encoding="utf-8")
    return out


def sweep(work: Path, args) -> None:
    """Val loss of runs (a) full and (d) LoRA 8 at several learning rates (the pretrained base of
    an earlier run of this bench in WORK/pretrain)."""
    grid = {"full": [1e-4, 3e-4, 1e-3, 3e-3], "lora8": [1e-3, 3e-3, 1e-2]}
    out = {}
    for kind, lrs in grid.items():
        for lr in lrs:
            spec = {"base": str(work / "pretrain"), "data": str(args.data), "threads": args.threads,
                    "out": str(work / f"sweep-{kind}-{lr:g}"), "lora_rank": 8 if kind == "lora8" else None,
                    "overrides": ["finetune.responses=false", f"lr={lr}", f"min_lr={lr / 10}",
                                  f"finetune.epochs={args.epochs}"]}
            r = run_child(spec, work / f"sweep-{kind}-{lr:g}.log")
            out[f"{kind}_lr{lr:g}"] = round(r["val_loss"], 4)
            print(f"{kind} lr {lr:g}: val loss {r['val_loss']:.4f}", flush=True)
    json_line({"bench": "finetune_lr_sweep", "machine": machine(), "epochs": args.epochs, **out})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lyre-bench-finetune"))
    parser.add_argument("--pretrain-steps", type=int, default=800)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA / "instruction-data.json")
    parser.add_argument("--preference", type=Path, default=DATA / "instruction-data-with-preference.json")
    parser.add_argument("--lr-full", type=float, default=1e-3,
                        help="full fine-tuning lr for this small model (default 1e-3; see --sweep)")
    parser.add_argument("--lr-lora", type=float, default=1e-2, help="LoRA lr (default 1e-2)")
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs (default 4)")
    parser.add_argument("--scale-steps", type=int, default=4,
                        help="training steps of the GPT-2 124M-shaped memory/time comparison (0: skip)")
    parser.add_argument("--sweep", action="store_true",
                        help="only the learning-rate sweep of runs (a) and (d) on a pretrained WORK/pretrain")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(scale_child(spec) if spec.get("scale") else child(spec)))
        return
    import torch

    if args.smoke:
        scratch = tempfile.TemporaryDirectory(prefix="lyre-bench-finetune-")  # removed at exit
        args.work, args.threads = Path(scratch.name), 1
        args.data = first_records(args.data, 120, args.work / "instructions.json")
        args.preference = first_records(args.preference, 120, args.work / "preference.json")
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    t_all = time.perf_counter()
    if args.sweep:
        sweep(work, args)
        return
    steps = 4 if args.smoke else args.pretrain_steps
    pre = pretrain(work, steps, args.threads, args.smoke)
    print(f"pretrained {steps} steps: val loss {pre['val_loss']:.4f} ({pre['wall_s']} s)", flush=True)
    random_base = random_init_copy(pre["run"], work / "random-init")
    quick = ["max_iters=2", "finetune.response_tokens=8"] if args.smoke else []
    plain = [*quick, "finetune.responses=false", f"finetune.epochs={args.epochs}"]
    full = [*plain, f"lr={args.lr_full}", f"min_lr={args.lr_full / 10}"]
    lora = [*plain, f"lr={args.lr_lora}", f"min_lr={args.lr_lora / 10}"]
    specs = {
        "a_pretrained_masked": {"base": str(pre["run"]), "overrides": full},
        "b_random_masked": {"base": str(random_base), "overrides": full},
        "c_pretrained_unmasked": {"base": str(pre["run"]), "overrides": [*full, "finetune.train_on_prompt=true"]},
        "d_pretrained_lora8": {"base": str(pre["run"]), "overrides": lora, "lora_rank": 8},
    }
    results = {}
    for name, spec in specs.items():
        spec = {**spec, "data": str(args.data), "out": str(work / name), "threads": args.threads}
        results[name] = run_child(spec, work / f"{name}.log", in_process=args.smoke and bool(results))
        r = results[name]
        print(f"{name}: val loss {r['val_loss']:.4f} (best {r['best_val_loss']:.4f}) after {r['steps']} "
              f"steps, {r['trainable']:,} trainable, {r['ms_per_step']:.0f} ms/step, peak "
              f"{r['peak_rss_mb']} MB, {r['wall_s']} s", flush=True)

    # The acceptance check on run (a).
    from lyre.finetune.command import answer_test_split

    run_a = work / "a_pretrained_masked"
    answer_test_split(run_a, quiet=True)
    responses = json.loads((run_a / "responses.json").read_text())
    chat = chat_check(run_a, responses["responses"][:1 if args.smoke else 10])
    print(f"acceptance: {responses['stopped']} of {responses['count']} test answers ended by "
          f"<|endoftext|>; lyre chat -p: {sum(c['ok'] for c in chat)} of {len(chat)} answered and stopped "
          "without a '###' continuation", flush=True)
    sample_file = samples(pre["run"], run_a, work, 2 if args.smoke else 10)

    # DPO from run (a).
    from lyre.chat.templates import get_template
    from lyre.finetune.encode import encode_all
    from lyre.finetune.records import read_records
    from lyre.tokenizers import load_tokenizer

    dpo = run_child({"base": str(run_a), "data": str(args.preference), "out": str(work / "e_dpo_lora8"),
                     "task": "dpo", "lora_rank": 8, "overrides": [*quick, "finetune.responses=false"],
                     "threads": args.threads},
                    work / "e_dpo.log", in_process=args.smoke)
    val, _ = read_records(work / "e_dpo_lora8" / "data" / "val.jsonl", preference=True)
    pairs, _ = encode_all(val, get_template("alpaca"), load_tokenizer(run_a / "tokenizer"), 256, "val")
    before = preference_accuracies(run_a, pairs)
    after = preference_accuracies(work / "e_dpo_lora8", pairs)
    reward_acc = dpo["last_eval"].get("val_preference_accuracy")
    print(f"DPO: held-out likelihood preference {before:.3f} -> {after:.3f}; implicit-reward "
          f"accuracy 0.5 -> {reward_acc:.3f}, margin {dpo['last_eval'].get('val_reward_margin'):.3f}, "
          f"val loss {dpo['val_loss']:.4f} ({dpo['steps']} steps, {dpo['wall_s']} s)", flush=True)
    print(f"samples: {sample_file}")
    scale = {}
    for name, rank in (("full", 0), ("lora8", 8)):
        if args.scale_steps and not args.smoke:
            scale[name] = run_child({"scale": True, "lora_rank": rank, "steps": args.scale_steps,
                                     "threads": args.threads}, work / f"scale-{name}.log")
            print(f"GPT-2 124M shape, batch 4 x 256, {name}: {scale[name]['trainable']:,} trainable, "
                  f"{scale[name]['ms_per_step']} ms/step, peak {scale[name]['peak_rss_mb']} MB", flush=True)
    a, b, c, d = (results[k] for k in specs)
    json_line({
        "bench": "finetune", "machine": machine(), "threads": args.threads, "smoke": args.smoke,
        "pretrain_steps": steps, "pretrain_val_loss": round(pre["val_loss"], 4),
        "val_loss_pretrained_masked": round(a["val_loss"], 4),
        "val_loss_random_init_masked": round(b["val_loss"], 4),
        "val_loss_pretrained_unmasked": round(c["val_loss"], 4),
        "val_loss_lora8": round(d["val_loss"], 4),
        "trainable_full": a["trainable"], "trainable_lora8": d["trainable"],
        "ms_per_step_full": round(a["ms_per_step"]), "ms_per_step_lora8": round(d["ms_per_step"]),
        "peak_rss_mb_full": a["peak_rss_mb"], "peak_rss_mb_lora8": d["peak_rss_mb"],
        "adapter_bytes_lora8": d["adapter_bytes"], "finetune_wall_s_full": a["wall_s"],
        "test_answers_stopped": responses["stopped"], "test_answers": responses["count"],
        "chat_ok": sum(x["ok"] for x in chat), "chat_prompts": len(chat),
        "dpo_likelihood_pref_before": round(before, 4), "dpo_likelihood_pref_after": round(after, 4),
        "dpo_reward_accuracy_after": reward_acc, "dpo_val_loss": round(dpo["val_loss"], 4),
        "lr_full": args.lr_full, "lr_lora": args.lr_lora, "epochs": args.epochs,
        **{f"gpt2_shape_{k}_{n}": v for n, r in scale.items() for k, v in r.items()},
        "total_wall_s": round(time.perf_counter() - t_all, 1),
        "masked_vs_unmasked_val_loss_ratio": round(c["val_loss"] / a["val_loss"], 4),
        "pretrained_vs_random_val_loss_ratio": round(b["val_loss"] / a["val_loss"], 4),
    })


if __name__ == "__main__":
    main()
