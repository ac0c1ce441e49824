"""Task files: reading, checking and naming the examples that `lyre eval --task` scores.

A task file is local JSONL, one example per line, all of one kind:

    {"context": "The capital of France is", "choices": ["Paris", "Rome"], "gold": 0}
    {"context": "2 + 2 =", "answer": "4"}

The first is multiple choice (scored by log-likelihood, score.py), the second exact-match
generation (greedy, generate.py). `gold` is the index of the right choice; `answer` is a string
or a list of accepted strings. Blank lines are ignored.

Bad input: a line that is not a JSON object, lacks a field, has a field of the wrong type or a
`gold` out of range is refused with its line number (LyreError: one line, exit 2 on the CLI).
With `skip_bad=True` (`--skip-bad`) such lines are counted and skipped instead, and the reasons
of the first few are reported; a file with no valid example is always an error.

A task is named by a path, or by a NAME without a path separator or suffix that is looked up, in
order, as `$LYRE_TASKS/NAME.jsonl` and `~/.cache/lyre/tasks/NAME.jsonl`. Nothing is downloaded:
put converted files there (convert.py) to refer to them by name.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from lyre.core.errors import LyreError
from lyre.core.io import read_text

MULTIPLE_CHOICE = "multiple_choice"
GENERATE = "generate"
TARGET_DELIMITER = " "  # between a context and its continuation (lm-eval's target_delimiter)
FEWSHOT_DELIMITER = "\n\n"  # between few-shot examples (lm-eval's fewshot_delimiter)
SHOWN_REASONS = 5  # skipped lines whose reasons a result keeps


@dataclass(frozen=True)
class Example:
    """One line of a task file: a context and either choices + gold or accepted answers."""

    context: str
    choices: tuple[str, ...] = ()
    gold: int = -1
    answers: tuple[str, ...] = ()
    line: int = 0  # 1-based line number in the file, for messages

    @property
    def target(self) -> str:
        """What a few-shot demonstration shows after the context: the gold choice or answer."""
        return self.choices[self.gold] if self.choices else self.answers[0]


@dataclass
class Task:
    name: str
    kind: str  # MULTIPLE_CHOICE or GENERATE
    examples: list[Example]
    path: Path | None = None
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)


def task_dirs() -> list[Path]:
    """Where a task NAME is looked up, in order."""
    dirs = []
    if os.environ.get("LYRE_TASKS"):
        dirs.append(Path(os.environ["LYRE_TASKS"]).expanduser())
    dirs.append(Path("~/.cache/lyre/tasks").expanduser())
    return dirs


def resolve_task(spec: str | Path) -> Path:
    """A task FILE as given, or a NAME looked up in task_dirs()."""
    path = Path(spec)
    if path.is_file():
        return path
    text = str(spec)
    if os.sep in text or "/" in text or path.suffix:
        raise LyreError(f"task file {spec} not found")
    for d in task_dirs():
        if (d / f"{text}.jsonl").is_file():
            return d / f"{text}.jsonl"
    where = ", ".join(str(d / f"{text}.jsonl") for d in task_dirs())
    raise LyreError(f"task {text!r} is neither a file nor a named task (looked for {where}); "
                    "tasks are local JSONL files, nothing is downloaded")


def load_task(spec: str | Path | Task, *, skip_bad: bool = False, layout: str | None = None) -> Task:
    """Read and check a task file (or NAME); see the module docstring for the format.

    layout: "hellaswag", "arc" or "mmlu" reads a file of that dataset's layout (convert.py)."""
    if isinstance(spec, Task):
        return spec
    path = resolve_task(spec)
    if layout is not None:
        from lyre.eval.harness.convert import convert

        lines = [json.dumps(d) for d in convert(layout, path)]
    else:
        lines = read_text(path, "task file").splitlines()
    examples, reasons = [], []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            examples.append(parse_example(text, number))
        except LyreError as e:
            if not skip_bad:
                raise LyreError(f"{path}:{e}") from None
            reasons.append(str(e))
    if not examples:
        raise LyreError(f"task file {path} has no valid example" + (f" ({reasons[0]})" if reasons else ""))
    kinds = {MULTIPLE_CHOICE if e.choices else GENERATE for e in examples}
    if len(kinds) > 1:
        raise LyreError(f"task file {path} mixes multiple-choice lines (choices, gold) and "
                        "generative lines (answer); keep one kind per file")
    return Task(path.stem, kinds.pop(), examples, path, len(reasons), reasons[:SHOWN_REASONS])


def parse_example(text: str, line: int) -> Example:
    """One JSONL line -> Example; LyreError("LINE: reason") when it is not a valid example."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise LyreError(f"{line}: not JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise LyreError(f"{line}: not a JSON object")
    context = obj.get("context")
    if not isinstance(context, str):
        raise LyreError(f"{line}: 'context' must be a string")
    if "choices" in obj or "gold" in obj:
        choices, gold = obj.get("choices"), obj.get("gold")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise LyreError(f"{line}: 'choices' must be a list of at least two strings")
        if isinstance(gold, bool) or not isinstance(gold, int):
            raise LyreError(f"{line}: 'gold' must be an integer index into 'choices'")
        if not 0 <= gold < len(choices):
            raise LyreError(f"{line}: gold {gold} is out of range for {len(choices)} choices")
        return Example(context, tuple(choices), gold, line=line)
    answer = obj.get("answer")
    answers = [answer] if isinstance(answer, str) else answer
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise LyreError(f"{line}: needs 'choices' and 'gold' (multiple choice) or 'answer' "
                        "(a string or a list of strings: exact match)")
    return Example(context, answers=tuple(answers), line=line)


def fewshot_context(task: Task, index: int, shots: int, seed: int = 1234) -> str:
    """The context that example `index` is scored after: `shots` solved examples, then its own.

    The demonstrations come from the same file, never the scored example itself, drawn with a
    random.Random seeded by (seed, index): every example gets its own fixed draw, so the score
    does not depend on --limit, batching or order. (lm-eval draws them from a training or
    validation split when the task has one and only falls back to the test split, excluding the
    scored document; a single local file is that fallback.)
    """
    example = task.examples[index]
    if shots == 0:
        return example.context
    n = len(task.examples)
    if shots >= n:
        raise LyreError(f"--shots {shots} needs more than {shots} examples; {task.name} has {n}")
    rng = random.Random(seed * 1_000_003 + index)
    others = [j + (j >= index) for j in rng.sample(range(n - 1), shots)]  # skip `index` itself
    shown = [task.examples[j].context + TARGET_DELIMITER + task.examples[j].target for j in others]
    return FEWSHOT_DELIMITER.join(shown) + FEWSHOT_DELIMITER + example.context
