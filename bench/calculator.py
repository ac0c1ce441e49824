"""The calculator recipe end to end: a small model learns to call a calculator (issue 21).

    python bench/calculator.py [--work DIR] [--eval 500] [--smoke]

1. Data (`lyre data calculator`): tool-use conversations for fine-tuning, a pretraining text of
   more conversations (most without the tool list: shorter, so more questions per token), and
   500 held-out questions whose numbers never occur in training; the same with --no-tool.
2. Pretrain `lyre train --config calculator-base` on the text, then `lyre finetune` it on the
   conversations (the `simple` template): the recipe of docs/calculator.md, each command in its
   own process, their CPU time (user + system, from the kernel's accounting of the children)
   summed: `cpu_minutes` is what the recipe costs however busy the machine is.
3. The held-out questions through the agent loop (lyre.agent.Agent with the built-in calculator,
   greedy, tool calls constrained by the grammar): `tool_accuracy` is the share whose final
   answer states the exact result.
4. The same recipe without the tool (pretrained and fine-tuned on --no-tool data, the same
   steps): `no_tool_accuracy`; `tool_gain_ratio` = tool / no-tool accuracy (higher is better;
   the no-tool accuracy is floored at one question so the ratio stays finite).

Ends with one JSON line. --smoke: every step at tiny sizes (a few training steps, 4 held-out
questions) in a temporary folder, in seconds; its figures mean nothing.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import add_smoke_flag, json_line, machine

REPO = Path(__file__).resolve().parent.parent
LYRE = [sys.executable, "-m", "lyre"]

# The recipe (docs/calculator.md). Pretraining: calculator-base's own steps; fine-tuning: these.
PRETRAIN_RECORDS = 70_000  # conversations in the pretraining text (~21 M characters)
TEXT_TOOLS_SHARE = 0.2  # of them with the tool list (the others are ~90 tokens, not ~300)
SFT_RECORDS = 3_000
# The base reads 256-token windows; a conversation with the tool list is ~300: rotary positions
# let the fine-tune run at a longer context (lyre.model.gpt.WEIGHTLESS_POSITIONS).
SFT_SETTINGS = ["--template", "simple", "--set", "model.block_size=384",
                "--set", "max_iters=1000", "--set", "batch_size=8",
                "--set", "lr=1e-3", "--set", "min_lr=0", "--set", "finetune.val_fraction=0.01",
                "--set", "finetune.test_fraction=0", "--set", "finetune.responses=false",
                "--set", "threads=1", "--set", "device=cpu", "--set", "eval_interval=1000"]
SMOKE_PRETRAIN = ["--set", "max_iters=3", "--set", "eval_interval=3", "--set", "eval_windows=1",
                  "--set", "batch_size=1", "--set", "data.val_fraction=0.5"]
SMOKE_SFT = ["--set", "max_iters=2", "--set", "eval_interval=2", "--set", "batch_size=1"]


def lyre(*args: str, cwd: Path) -> float:
    """Run one `lyre` command; its CPU seconds (user + system, the kernel's count for that one
    process, so the two variants can run side by side)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([*LYRE, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"lyre {' '.join(args)} failed:\n{err.read()[-3000:]}")
    return usage.ru_utime + usage.ru_stime


def recipe(work: Path, tool: bool, smoke: bool) -> dict:
    """Data, pretraining and fine-tuning for one variant, in its own folder (the commands of
    docs/calculator.md); the run and the CPU seconds of each stage."""
    folder = work / ("tool" if tool else "no-tool")
    folder.mkdir(parents=True, exist_ok=True)
    variant = [] if tool else ["--no-tool"]
    n_pre, n_sft = (40, 20) if smoke else (PRETRAIN_RECORDS, SFT_RECORDS)
    cpu = {}
    cpu["data"] = lyre("data", "calculator", "--n", str(n_pre), "--seed", "1", *variant,
                       "--out", "pretrain.jsonl", "--text-out", "calc.txt",
                       "--text-tools-share", str(TEXT_TOOLS_SHARE), cwd=folder)
    cpu["data"] += lyre("data", "calculator", "--n", str(n_sft), "--seed", "2", *variant,
                        "--out", "calc.jsonl", "--held-out", "500",
                        "--held-out-out", "held-out.jsonl", cwd=folder)
    cpu["pretrain"] = lyre("train", "--config", "calculator-base", "--out", "runs/base",
                           "--no-progress", "--force", *(SMOKE_PRETRAIN if smoke else []), cwd=folder)
    cpu["finetune"] = lyre("finetune", "runs/base", "--data", "calc.jsonl", "--out", "runs/calc",
                           "--no-progress", "--force", *SFT_SETTINGS,
                           *(SMOKE_SFT if smoke else []), cwd=folder)
    return {"run": folder / "runs" / "calc", "held": folder / "held-out.jsonl", "cpu_s": cpu}


# ----------------------------------------------------------------------------------------------
# Asking the held-out questions


def agent_answers(run_dir: Path, questions: list[str], tool: bool) -> list[str]:
    """Final answers through lyre.agent: the loop `lyre agent` runs, greedy, calls constrained
    by the tool-call grammar, the built-in calculator."""
    from lyre.agent import Agent, builtin_tool
    from lyre.agent.llm import EngineChat
    from lyre.generate.runs import load_run

    llm = EngineChat(load_run(run_dir))
    agent = Agent(llm, tools=[builtin_tool("calculator")] if tool else [], max_steps=4)
    return [agent.run(q).answer or "" for q in questions]


def accuracy(run_dir: Path, held: Path, n: int, tool: bool) -> tuple[float, float]:
    """(share exact, wall seconds)."""
    from lyre.data.calculator import expected_result, is_exact

    records = [json.loads(line) for line in held.read_text().splitlines()][:n]
    questions = [r["messages"][0]["content"] for r in records]
    start = time.perf_counter()
    answers = agent_answers(run_dir, questions, tool)
    wall = time.perf_counter() - start
    good = sum(is_exact(a, expected_result(r)) for a, r in zip(answers, records, strict=True))
    return good / len(records), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="folder for the data and runs (default: temporary)")
    parser.add_argument("--eval", type=int, default=500, help="held-out questions asked")
    parser.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True,
                        help="train the two variants side by side (default; CPU time is counted "
                             "per process either way)")
    add_smoke_flag(parser)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(machine())
    work = args.work or Path(tempfile.mkdtemp(prefix="lyre-calc-"))
    work.mkdir(parents=True, exist_ok=True)
    n_eval = 4 if args.smoke else args.eval
    result = {"bench": "calculator", "smoke": args.smoke, "eval_questions": n_eval}
    try:
        # The two recipes are independent processes: side by side (one core each on two).
        with ThreadPoolExecutor(2 if args.parallel else 1) as pool:
            made_by_variant = list(pool.map(lambda tool: recipe(work, tool, args.smoke), (True, False)))
        for tool, made in zip((True, False), made_by_variant, strict=True):
            key = "tool" if tool else "no_tool"
            acc, wall = accuracy(made["run"], made["held"], n_eval, tool)
            cpu = made["cpu_s"]
            result[f"{key}_accuracy"] = round(acc, 4)
            result[f"{key}_cpu_minutes"] = round((cpu["pretrain"] + cpu["finetune"]) / 60, 2)
            result[f"{key}_cpu_s"] = {k: round(v, 1) for k, v in cpu.items()}
            result[f"{key}_eval_wall_s"] = round(wall, 1)
            print(f"{key}: accuracy {acc:.3f} on {n_eval} held-out questions, "
                  f"pretrain + finetune {result[f'{key}_cpu_minutes']} CPU minutes", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    floor = 1 / n_eval
    result["cpu_minutes"] = result["tool_cpu_minutes"]
    result["tool_gain_ratio"] = round(result["tool_accuracy"] / max(result["no_tool_accuracy"], floor), 2)
    json_line(result)


if __name__ == "__main__":
    main()
