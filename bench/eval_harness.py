"""Multiple-choice scoring speed: `lyre eval --task` next to lm-eval-harness on the same model.

    python bench/eval_harness.py [--examples 64] [--batch-size 16] [--threads N] [--smoke]

One GPT-2-shaped lyre run (GPT-2 124M: 12 layers, 12 heads, 768 wide, context 1024, the GPT-2
tokenizer from ../shared/data/gpt2; random init after one training step, since speed does not
depend on the weights), exported with `lyre.hf.export_hf`. One HellaSwag-shaped task file:
contexts of 30..60 Iliad words, 4 endings of 8..20 words. Both sides score it 0-shot with the
same batch size and torch threads:

* lyre: `lyre.eval.harness.evaluate_task` on the run (what `lyre eval RUN --task FILE` runs);
* lm-eval: `lm_eval.simple_evaluate(model="hf", ...)` on the export, with a local task YAML over
  the same JSONL (offline), timed around the whole call; lyre's time likewise includes loading
  the run (both set-ups are small next to the forward passes at this size).

The scores must be identical (acc, acc_norm, and every example's choices); then
eval_speed_ratio = lyre examples/s / lm-eval examples/s (higher is better, goal >= 2).
--smoke: a 2-layer model with a small BPE vocabulary and 6 examples. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPT2_DIR = ROOT.parent / "shared" / "data" / "gpt2"

os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

import torch  # noqa: E402
from _common import add_smoke_flag, json_line, machine  # noqa: E402

from lyre.eval.harness import evaluate_task, lm_eval_task_yaml  # noqa: E402
from lyre.generate.runs import load_run  # noqa: E402
from lyre.hf import export_hf  # noqa: E402
from lyre.run.config import BUNDLED_ILIAD, load_config  # noqa: E402
from lyre.train.trainer import train  # noqa: E402

SHAPES = {
    "gpt2-124m": ["n_layer=12", "n_head=12", "n_embd=768", "block_size=1024"],
    "tiny": ["n_layer=2", "n_head=2", "n_embd=32", "block_size=256"],
}
TOML = """\
[model]
pos = "learned"
norm = "layernorm"
act = "gelu"
bias = true
dropout = 0.0

[data]
corpus = ["{corpus}"]
tokenizer = "{tokenizer}"

[train]
batch_size = 1
max_iters = 1
eval_interval = 1000
eval_windows = 1
final_eval = false
device = "cpu"
"""


def make_run(work: Path, shape: str, tokenizer: str) -> Path:
    corpus = work / "corpus.txt"
    corpus.write_text(BUNDLED_ILIAD.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    (work / "run.toml").write_text(TOML.format(corpus=corpus, tokenizer=tokenizer), encoding="utf-8")
    run_dir = work / "run"
    train(load_config(work / "run.toml", SHAPES[shape]), run_dir, progress=False, plot=False)
    return run_dir


def make_task(path: Path, n: int, seed: int = 0) -> Path:
    words = BUNDLED_ILIAD.read_text(encoding="utf-8").split()
    rng = random.Random(seed)

    def span(lo: int, hi: int) -> str:
        a = rng.randrange(len(words) - hi)
        return " ".join(words[a : a + rng.randrange(lo, hi)])

    lines = [{"context": span(30, 60), "choices": [span(8, 20) for _ in range(4)], "gold": rng.randrange(4)}
             for _ in range(n)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def run_lm_eval(hf_dir: Path, task: Path, work: Path, batch_size: int) -> tuple[dict, list, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    (work / "yaml").mkdir(exist_ok=True)
    (work / "yaml" / "bench_mc.yaml").write_text(lm_eval_task_yaml("bench_mc", task), encoding="utf-8")
    manager = TaskManager(include_path=str(work / "yaml"))
    start = time.perf_counter()
    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_dir},tokenizer={hf_dir},dtype=float32",
                                  tasks=["bench_mc"], task_manager=manager, batch_size=batch_size,
                                  device="cpu", log_samples=True)
    seconds = time.perf_counter() - start
    samples = sorted(res["samples"]["bench_mc"], key=lambda s: s["doc_id"])
    return res["results"]["bench_mc"], samples, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_smoke_flag(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        shape, tokenizer, n = "tiny", "bpe:300", 6
    else:
        if not GPT2_DIR.is_dir():
            sys.exit(f"bench/eval_harness.py needs the GPT-2 tokenizer files in {GPT2_DIR}")
        shape, tokenizer, n = "gpt2-124m", f"gpt2:{GPT2_DIR}", args.examples
    print(machine(), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["HF_HOME"] = str(work / "hf_home")
        run_dir = make_run(work, shape, tokenizer)
        hf_dir = export_hf(run_dir, work / "hf")
        task = make_task(work / "bench_mc.jsonl", n)
        start = time.perf_counter()  # both sides timed from loading the model to the scores
        run = load_run(run_dir, device="cpu")
        ours = evaluate_task(run, task, batch_size=args.batch_size)
        lyre_s = time.perf_counter() - start
        theirs, samples, lm_eval_s = run_lm_eval(hf_dir, task, work, args.batch_size)
        golds = _golds(task)
    picks = [max(range(len(s["filtered_resps"])), key=lambda i: (s["filtered_resps"][i][0], -i)) for s in samples]
    same = (ours.acc == theirs["acc,none"] and ours.acc_norm == theirs["acc_norm,none"]
            and picks == ours.predictions
            and [s["acc_norm"] for s in samples] == [float(p == e) for p, e in
                                                     zip(ours.predictions_norm, golds, strict=True)])
    if not same:
        sys.exit(f"scores differ: lyre acc {ours.acc} acc_norm {ours.acc_norm}, lm-eval {theirs}")
    record = {
        "bench": "eval_harness", "smoke": args.smoke, "shape": shape, "examples": n,
        "batch_size": args.batch_size, "threads": args.threads, "acc": ours.acc, "acc_norm": ours.acc_norm,
        "identical_scores": same, "lyre_examples_s": n / lyre_s, "lm_eval_examples_s": n / lm_eval_s,
        "eval_speed_ratio": lm_eval_s / lyre_s,
    }
    print(f"lyre {n / lyre_s:.2f} examples/s, lm-eval {n / lm_eval_s:.2f} examples/s, identical scores",
          file=sys.stderr)
    json_line(record)


def _golds(task: Path) -> list[int]:
    return [json.loads(line)["gold"] for line in task.read_text(encoding="utf-8").splitlines() if line.strip()]


if __name__ == "__main__":
    main()
