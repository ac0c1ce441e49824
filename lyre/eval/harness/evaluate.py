"""evaluate_task: a run scored on one task file, as lm-eval-harness scores it.

Multiple choice (lm-eval's `output_type: multiple_choice`, lm_eval/api/task.py): every choice
becomes the continuation `" " + choice` (target_delimiter " ") of the example's context (after
`shots` demonstrations joined by "\\n\\n", tasks.fewshot_context), and its summed log-likelihood
`ll` is computed (score.py). Then, with numpy's argmax (ties go to the first choice):

    acc            argmax_i ll_i == gold
    acc_norm       argmax_i ll_i / len(choice_i) == gold     (length in characters of the choice,
                                                              without the delimiter)
    acc_per_token  argmax_i ll_i / tokens_i == gold          (nanochat's CORE picks by the mean
                                                              loss per continuation token)

Centered accuracy (nanochat's CORE metric): accuracy rescaled so that guessing scores 0 and a
perfect model 1, `(acc - baseline) / (1 - baseline)`, where baseline is the mean of 1/len(choices)
over the examples (the expected accuracy of a uniform guess). CORE is the mean of the tasks'
centered accuracies (`core_score`); a generative task's baseline is 0.

Exact match (`{"context", "answer"}` lines): greedy decoding through lyre's engine, stopped at
"\\n\\n" or <|endoftext|>; a prediction counts when its stripped text equals a stripped
accepted answer.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lyre.core.errors import LyreError
from lyre.eval.harness.score import encode_pair, loglikelihoods
from lyre.eval.harness.tasks import (
    FEWSHOT_DELIMITER,
    GENERATE,
    TARGET_DELIMITER,
    Task,
    fewshot_context,
    load_task,
)


@dataclass
class TaskResult:
    task: str
    kind: str  # multiple_choice or generate
    n: int  # examples scored
    shots: int
    acc: float  # multiple choice: acc; generate: exact match
    acc_norm: float | None = None
    acc_per_token: float | None = None
    acc_centered: float = 0.0  # (acc - baseline) / (1 - baseline)
    acc_norm_centered: float | None = None
    random_baseline: float = 0.0  # mean 1/len(choices); 0 for exact match
    exact_match: float | None = None
    skipped: int = 0  # bad lines skipped (skip_bad)
    skip_reasons: list[str] = field(default_factory=list)
    # Per example, in file order: the chosen index (acc), by length (acc_norm), or the generated text.
    predictions: list = field(default_factory=list, repr=False)
    predictions_norm: list = field(default_factory=list, repr=False)

    def to_dict(self, with_predictions: bool = False) -> dict:
        d = asdict(self)
        if not with_predictions:
            d.pop("predictions")
            d.pop("predictions_norm")
        return {k: v for k, v in d.items() if v is not None}


def evaluate_task(
    run,
    task: str | Path | Task,
    *,
    shots: int = 0,
    limit: int | None = None,
    batch_size: int = 16,
    seed: int = 1234,
    skip_bad: bool = False,
    layout: str | None = None,
    progress: bool = False,
    max_new_tokens: int = 64,
) -> TaskResult:
    """Score `run` (a run directory or a LoadedRun of lyre.generate.runs) on a task file or NAME.

    shots: demonstrations before each example (drawn from the same file, seeded); limit: only
    the first N examples; batch_size: contexts (their choices on top) or, where they cannot
    share, (context, choice) pairs per forward pass; skip_bad: count
    and skip bad lines instead of refusing the file; layout: read a HellaSwag/ARC/MMLU file.
    """
    from lyre.engine.sampling import check_int

    check_int("shots", shots, 0, None)
    check_int("batch_size", batch_size, 1, None)
    if limit is not None:
        check_int("limit", limit, 1, None)
    run = _load(run)
    task = load_task(task, skip_bad=skip_bad, layout=layout)
    indices = range(len(task.examples) if limit is None else min(limit, len(task.examples)))
    contexts = [fewshot_context(task, i, shots, seed) for i in indices]
    examples = [task.examples[i] for i in indices]
    bar = _bar(len(examples), task.name, progress)
    try:
        if task.kind == GENERATE:
            result = _exact_match(run, examples, contexts, batch_size, max_new_tokens, bar)
        else:
            result = _multiple_choice(run, examples, contexts, batch_size, bar)
    finally:
        bar.close()
    result.task, result.shots = task.name, shots
    result.skipped, result.skip_reasons = task.skipped, task.skip_reasons
    return result


def core_score(results: list[TaskResult]) -> float:
    """nanochat's CORE: the mean centered accuracy over tasks."""
    if not results:
        raise LyreError("CORE needs at least one task result")
    return float(np.mean([r.acc_centered for r in results]))


def centered(acc: float, baseline: float) -> float:
    return (acc - baseline) / (1.0 - baseline)


# ---- the two kinds of task --------------------------------------------------------------------


def _multiple_choice(run, examples, contexts, batch_size: int, bar) -> TaskResult:
    requests = [encode_pair(run.tokenizer, context, TARGET_DELIMITER + choice)
                for example, context in zip(examples, contexts, strict=True) for choice in example.choices]
    bar.reset(total=len(requests))  # the bar counts (context, choice) pairs: they finish out of order
    bar.unit = "pair"
    scores = loglikelihoods(run.model, requests, batch_size=batch_size, device=run.device,
                            on_batch=bar.update)
    picks, picks_norm, picks_token, hits = [], [], [], np.zeros(3)
    at = 0
    for example in examples:
        n = len(example.choices)
        ll = np.array([s for s, _ in scores[at : at + n]])
        tokens = np.array([float(t) for _, t in scores[at : at + n]])
        chars = np.array([float(len(c)) for c in example.choices])
        at += n
        pick, pick_norm, pick_token = int(np.argmax(ll)), int(np.argmax(ll / chars)), int(np.argmax(ll / tokens))
        picks.append(pick)
        picks_norm.append(pick_norm)
        picks_token.append(pick_token)
        hits += [pick == example.gold, pick_norm == example.gold, pick_token == example.gold]
    acc, acc_norm, acc_token = (hits / len(examples)).tolist()
    baseline = float(np.mean([1.0 / len(e.choices) for e in examples]))
    return TaskResult(
        task="", kind="multiple_choice", n=len(examples), shots=0, acc=acc, acc_norm=acc_norm,
        acc_per_token=acc_token, acc_centered=centered(acc, baseline),
        acc_norm_centered=centered(acc_norm, baseline), random_baseline=baseline,
        predictions=picks, predictions_norm=picks_norm,
    )


def _exact_match(run, examples, contexts, batch_size: int, max_new_tokens: int, bar) -> TaskResult:
    from lyre.engine import Engine, SamplingConfig

    engine = Engine(run.model, run.tokenizer, run.device)
    params = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0,
                            stop=[FEWSHOT_DELIMITER], seed=0)
    texts = []
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        texts += [c.text for c in engine.generate(chunk, params, max_batch=batch_size)]
        bar.update(len(chunk))
    hits = [t.strip() in {a.strip() for a in e.answers} for t, e in zip(texts, examples, strict=True)]
    acc = float(np.mean(hits))
    return TaskResult(task="", kind=GENERATE, n=len(examples), shots=0, acc=acc, exact_match=acc,
                      acc_centered=acc, predictions=texts)


# ---- helpers ----------------------------------------------------------------------------------


def _load(run):
    """A LoadedRun from a run directory (or as given); refuses models that do not continue text."""
    from lyre.generate.runs import LoadedRun, load_run
    from lyre.model import capabilities

    if not isinstance(run, LoadedRun):
        run = load_run(run, device="auto")
    if not capabilities(run.model).decoder_only:
        raise LyreError(f"{run.run_dir} is an encoder-decoder (seq2seq) run: the evaluation harness "
                        "scores continuations of a text, which does not apply; use `lyre eval RUN` "
                        "for its loss and exact match on its pairs")
    return run


def _bar(total: int, name: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="ex", file=sys.stderr, dynamic_ncols=True,
                disable=not progress or not sys.stderr.isatty())
