"""The evaluation harness: multiple-choice and exact-match tasks from local JSONL, scored the way
lm-eval-harness scores them (docs/eval.md).

    tasks.py     task files: format, checks, named tasks, few-shot contexts
    score.py     log-likelihood of a continuation after a context, batched (lm-eval's recipe)
    evaluate.py  evaluate_task (acc, acc_norm, centered accuracy, exact match), core_score
    convert.py   HellaSwag / ARC / MMLU JSONL layouts -> task lines

    from lyre.eval.harness import evaluate_task
    evaluate_task("runs/gpt2", "hellaswag.jsonl", shots=0).acc_norm
"""

from lyre.eval.harness.convert import LAYOUTS, convert, lm_eval_task_yaml, write_task
from lyre.eval.harness.evaluate import TaskResult, core_score, evaluate_task
from lyre.eval.harness.tasks import Example, Task, load_task, task_dirs

__all__ = ["Example", "LAYOUTS", "Task", "TaskResult", "convert", "core_score", "evaluate_task",
           "lm_eval_task_yaml", "load_task", "task_dirs", "write_task"]
