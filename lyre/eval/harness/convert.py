"""Converters: HellaSwag, ARC and MMLU files (JSONL, as their datasets publish them) -> lyre's
task lines `{"context", "choices", "gold"}`, formatted as lm-eval's task YAMLs format them.

    convert("hellaswag", "hellaswag_val.jsonl")  -> list of task dicts
    lyre eval RUN --task hellaswag_val.jsonl --layout hellaswag
    write_task(convert("arc", "ARC-Easy-Test.jsonl"), "~/.cache/lyre/tasks/arc_easy.jsonl")

Layouts (one JSON object per line, local files only):

  hellaswag  {"activity_label", "ctx_a", "ctx_b", "endings": [4], "label"}: context
             "{activity_label}: {ctx_a} {Ctx_b}" and the endings, both cleaned as lm-eval's
             hellaswag/utils.py does (strip, " [title]" -> ". ", other [tags] dropped, double
             spaces made single); gold int(label).
  arc        {"question": str, "choices": {"text": [...], "label": [...]}, "answerKey"} (the
             Hugging Face layout) or {"question": {"stem", "choices": [{"text", "label"}]},
             "answerKey"} (AI2's original): context "Question: {question}\\nAnswer:", the
             choice texts, gold the index of answerKey among the labels.
  mmlu       {"question", "choices": [4], "answer": 0..3 or "A".."D"}: context
             "{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:", choices the letters "A".."D"
             (lm-eval's mmlu default; its per-subject description line is left out).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lyre.core.errors import LyreError

LAYOUTS = ("hellaswag", "arc", "mmlu")
LETTERS = "ABCDEFGHIJ"


def convert(layout: str, path: str | Path) -> list[dict]:
    """Read a local JSONL file of `layout` and return lyre task lines (dicts)."""
    if layout not in CONVERTERS:
        raise LyreError(f"unknown task layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LyreError(f"cannot read {layout} file {path}: {e}") from None
    out = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            out.append(CONVERTERS[layout](json.loads(text)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise LyreError(f"{path}:{number}: not a {layout} line ({type(e).__name__}: {e})") from None
    return out


def write_task(lines: list[dict], path: str | Path) -> Path:
    """Write task lines as JSONL (e.g. into $LYRE_TASKS to use them by name)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


def lm_eval_task_yaml(name: str, path: str | Path) -> str:
    """An lm-eval-harness task (YAML) over a lyre task file, zero-shot, scored by acc and
    acc_norm: put it in a folder given to lm-eval's `TaskManager(include_path=...)` to score the
    same examples with lm-eval (how tests/test_eval_harness.py and bench/eval_harness.py check
    parity; docs/eval.md)."""
    metrics = "".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n"
                      for m in ("acc", "acc_norm"))
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\n"
            "test_split: test\noutput_type: multiple_choice\ndoc_to_text: context\n"
            "doc_to_choice: choices\ndoc_to_target: gold\nnum_fewshot: 0\nmetric_list:\n" + metrics)


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(doc: dict) -> dict:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {"context": _hellaswag_clean(doc["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_clean(e) for e in doc["endings"]], "gold": int(doc["label"])}


def arc(doc: dict) -> dict:
    question = doc["question"]
    if isinstance(question, dict):  # AI2's original layout
        texts = [c["text"] for c in question["choices"]]
        labels = [c["label"] for c in question["choices"]]
        question = question["stem"]
    else:
        texts, labels = list(doc["choices"]["text"]), list(doc["choices"]["label"])
    return {"context": f"Question: {question}\nAnswer:", "choices": texts,
            "gold": labels.index(doc["answerKey"])}


def mmlu(doc: dict) -> dict:
    choices = list(doc["choices"])
    answer = doc["answer"]
    gold = LETTERS.index(answer) if isinstance(answer, str) else int(answer)
    options = "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return {"context": f"{doc['question'].strip()}{options}\nAnswer:",
            "choices": list(LETTERS[: len(choices)]), "gold": gold}


CONVERTERS = {"hellaswag": hellaswag, "arc": arc, "mmlu": mmlu}
