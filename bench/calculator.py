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
   answer states the exact result. Until lyre.agent exists, a minimal loop of the same parts
   (template, grammar, engine, parse_tool_calls, an exact local calculator) stands in and the
   JSON line says `"loop": "minimal"`.
4. The same recipe without the tool (pretrained and fine-tuned on --no-tool data, the same
   steps): `no_tool_accuracy`; `tool_gain_ratio` = tool / no-tool accuracy (higher is better;
   the no-tool accuracy is floored at one question so the ratio stays finite).

Ends with one JSON line. --smoke: every step at tiny sizes (a few training steps, 4 held-out
questions) in a temporary folder, in seconds; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_smoke_flag, json_line, machine

REPO = Path(__file__).resolve().parent.parent
LYRE = [sys.executable, "-m", "lyre"]

# The recipe (docs/calculator.md). Pretraining: calculator-base's own steps; fine-tuning: these.
PRETRAIN_RECORDS = 24_000  # conversations in the pretraining text (with the drills ~6.4 M chars)
COPY_DRILLS = 60_000  # short number-copying lines mixed in (`Copy 48,213: "48213"`)
TEXT_TOOLS_SHARE = 0.02  # of them with the tool list (the others are ~140 characters, not ~900)
SFT_RECORDS = 3_000
# The base reads 256-character windows; the conversations with the tool list are ~950: rotary
# positions let the fine-tune run at a longer context (lyre.finetune.prepare.WEIGHTLESS_POSITIONS).
SFT_SETTINGS = ["--template", "simple", "--set", "model.block_size=1024",
                "--set", "max_iters=600", "--set", "batch_size=4",
                "--set", "lr=1e-3", "--set", "min_lr=0", "--set", "finetune.val_fraction=0.01",
                "--set", "finetune.test_fraction=0", "--set", "finetune.responses=false",
                "--set", "threads=1", "--set", "device=cpu", "--set", "eval_interval=600"]
SMOKE_PRETRAIN = ["--set", "max_iters=3", "--set", "eval_interval=3", "--set", "eval_windows=1",
                  "--set", "batch_size=1", "--set", "data.val_fraction=0.5"]
SMOKE_SFT = ["--set", "max_iters=2", "--set", "eval_interval=2", "--set", "batch_size=1"]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def lyre(*args: str, cwd: Path) -> float:
    """Run one `lyre` command; its CPU seconds (user + system)."""
    before = children_cpu_s()
    proc = subprocess.run([*LYRE, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"lyre {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return children_cpu_s() - before


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
                       "--text-tools-share", str(TEXT_TOOLS_SHARE),
                       "--text-copy-drills", str(4 if smoke else COPY_DRILLS), cwd=folder)
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


def agent_answers(run_dir: Path, questions: list[str], tool: bool) -> tuple[list[str], str]:
    """Final answers through lyre.agent (or the minimal loop while it is not there)."""
    try:
        from lyre.agent import Agent, builtin_tool
        from lyre.agent.llm import EngineChat
    except ImportError:
        return minimal_loop(run_dir, questions, tool), "minimal"
    from lyre.generate.runs import load_run
    from lyre.tokenizers.char import replace_unknown

    run = load_run(run_dir)
    # A tool's error text may hold characters a char model never saw ("'"): read them as '?'.
    if run.tokenizer.kind == "char":
        replace_unknown(run.tokenizer)
    llm = EngineChat(run)
    agent = Agent(llm, tools=[builtin_tool("calculator")] if tool else [], max_steps=4)
    return [agent.run(q).answer or "" for q in questions], "agent"


def minimal_loop(run_dir: Path, questions: list[str], tool: bool) -> list[str]:
    """The agent loop's parts, batched: ask, run each call with an exact calculator, ask again."""
    from lyre.chat.templates import get_template, template_name_for_run
    from lyre.chat.tools import Tool, parse_tool_calls, tool_call_grammar
    from lyre.constrain import Constraint
    from lyre.data.calculator import CALCULATOR_TOOL
    from lyre.engine import Engine, SamplingConfig
    from lyre.generate.runs import load_run

    run = load_run(run_dir)
    template = get_template(template_name_for_run(run_dir))
    engine = Engine(run.model, run.tokenizer)
    tools = [Tool.from_openai(CALCULATOR_TOOL)] if tool else []
    constraint = Constraint.grammar(tool_call_grammar(tools, required=False)) if tools else None
    params = SamplingConfig(max_new_tokens=120, temperature=0, stop=template.stop, overflow="stop",
                            constraint=constraint)
    conversations = [[{"role": "user", "content": q}] for q in questions]
    waiting = list(range(len(questions)))
    for _ in range(2):  # a call, then the answer
        if not waiting:
            break
        outs = engine.generate([template.render(conversations[i], tools) for i in waiting], params)
        calls = []
        for i, out in zip(waiting, outs, strict=True):
            reply = parse_tool_calls(out.text, tools) if tools else None
            if not reply or not reply.calls:
                conversations[i].append({"role": "assistant", "content": out.text.strip()})
                continue
            call = reply.calls[0]
            conversations[i] += [
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c", "type": "function", "function": {
                        "name": call.name, "arguments": call.arguments_json()}}]},
                {"role": "tool", "tool_call_id": "c", "content": exact(call.arguments)}]
            calls.append(i)
        waiting = calls
    return [c[-1]["content"] if c[-1]["role"] == "assistant" else "" for c in conversations]


def exact(arguments: dict) -> str:
    """`a OP b` on integers (what the data asks); anything else is an error text."""
    try:
        a, op, b = str(arguments.get("expression", "")).split(" ")
        x, y = int(a), int(b)
        return str({"+": x + y, "-": x - y, "*": x * y, "//": x // y}[op])
    except (ValueError, KeyError, ZeroDivisionError):
        return "error: bad expression"  # characters the char model knows


def accuracy(run_dir: Path, held: Path, n: int, tool: bool) -> tuple[float, str, float]:
    """(share exact, the loop used, wall seconds)."""
    from lyre.data.calculator import expected_result, is_exact

    records = [json.loads(line) for line in held.read_text().splitlines()][:n]
    questions = [r["messages"][0]["content"] for r in records]
    start = time.perf_counter()
    answers, loop = agent_answers(run_dir, questions, tool)
    wall = time.perf_counter() - start
    good = sum(is_exact(a, expected_result(r)) for a, r in zip(answers, records, strict=True))
    return good / len(records), loop, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="folder for the data and runs (default: temporary)")
    parser.add_argument("--eval", type=int, default=500, help="held-out questions asked")
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
        for tool in (True, False):
            key = "tool" if tool else "no_tool"
            made = recipe(work, tool, args.smoke)
            acc, loop, wall = accuracy(made["run"], made["held"], n_eval, tool)
            cpu = made["cpu_s"]
            result[f"{key}_accuracy"] = round(acc, 4)
            result[f"{key}_cpu_minutes"] = round((cpu["pretrain"] + cpu["finetune"]) / 60, 2)
            result[f"{key}_cpu_s"] = {k: round(v, 1) for k, v in cpu.items()}
            result[f"{key}_eval_wall_s"] = round(wall, 1)
            result["loop"] = loop
            print(f"{key}: accuracy {acc:.3f} on {n_eval} held-out questions ({loop} loop), "
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
