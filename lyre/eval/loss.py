"""Evaluation numbers that compare across models and tokenizers: loss, perplexity, bits per byte.

Loss (nats per token) and perplexity depend on the tokenizer: a BPE token holds several
characters, so a BPE model has a higher loss per token than a char model on the same text even
when it predicts the text better. Bits per byte divides the total loss by the UTF-8 bytes the
scored tokens stand for (Tokenizer.token_bytes), which is the same for every tokenizer, so it
ranks a char and a BPE model on the same text fairly.

Scoring uses lyre.data.corpus's exact sliding window: windows of block_size tokens every `stride`
tokens, and every token except the first is scored exactly once. With stride < block_size each
scored token (past the first window) sees at least block_size - stride tokens of context: a
smaller stride costs more compute and gives a lower, fairer loss. The default stride is
block_size (non-overlapping windows, the same as the end-of-training evaluation).

    lyre eval RUN_DIR --data heldout.txt [--stride S] [--json]
    evaluate_run("runs/iliad-char", "heldout.txt").bits_per_byte

Without --data, `lyre eval RUN` scores what the run held out, by the kind of run (RunConfig.kind):
a language model its validation tokens (above); a fine-tuned chat model (SFT, DPO) the answers
of its validation split, as SFT trains them (the loss mask of lyre.finetune.encode: the prompt
is context, only the answer and its <|endoftext|> are scored; DPO: the chosen answers); an
encoder-decoder its validation pairs (lyre.zoo.translate: loss and exact match). A classifier's
metrics are its own (`lyre classify`, RUN/classification.json).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from lyre.core.errors import LyreError
from lyre.data.corpus import evaluate_loss
from lyre.run.rundir import RunDir
from lyre.tokenizers import Tokenizer


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per scored token, in nats
    perplexity: float  # exp(loss)
    bits_per_byte: float  # total loss in bits / bytes of the scored tokens
    tokens: int  # tokens scored (all but the first)
    bytes: int  # UTF-8 bytes those tokens stand for
    block_size: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """Bytes each token id stands for, as an array indexed by id."""
    return np.array([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64)


def evaluate_tokens(
    model: nn.Module,
    tokenizer: Tokenizer,
    tokens: np.ndarray,
    *,
    stride: int | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> EvalResult:
    """Score token ids (already encoded with `tokenizer`) with the model's context length."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LyreError(f"batch_size must be a positive integer; got {batch_size!r}")
    block_size = model.config.block_size
    device = device if device is not None else next(model.parameters()).device
    tokens = np.asarray(tokens)
    scores = evaluate_loss(model, tokens, block_size, stride, batch_size, device)
    n_bytes = int(token_byte_lengths(tokenizer)[tokens[1:]].sum())  # the scored tokens: all but the first
    total_bits = scores["loss"] * scores["tokens"] / math.log(2)
    return EvalResult(
        loss=scores["loss"],
        perplexity=scores["perplexity"],
        bits_per_byte=total_bits / n_bytes if n_bytes else math.inf,
        tokens=scores["tokens"],
        bytes=n_bytes,
        block_size=block_size,
        stride=stride if stride is not None else block_size,
    )


def evaluate_text(
    model: nn.Module,
    tokenizer: Tokenizer,
    text: str,
    *,
    stride: int | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> EvalResult:
    """Loss, perplexity and bits per byte of the model on `text`."""
    if not text:
        raise LyreError("the evaluation text is empty")
    tokens = np.array(tokenizer.encode(text), dtype=np.int64)
    return evaluate_tokens(model, tokenizer, tokens, stride=stride, batch_size=batch_size, device=device)


def read_text(path: str | Path) -> str:
    """A UTF-8 text file, with a one-line error for every way it can be wrong."""
    path = Path(path)
    if not path.is_file():
        raise LyreError(f"evaluation data {path} not found (give a UTF-8 text file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LyreError(f"evaluation data {path} is not UTF-8 text (byte {e.start})") from None
    if not text:
        raise LyreError(f"evaluation data {path} is empty")
    return text


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    *,
    stride: int | None = None,
    batch_size: int = 8,
    checkpoint: str = "best",
    device: str | torch.device = "auto",
) -> EvalResult:
    """Evaluate the model of RUN_DIR on the text file `data`."""
    from lyre.generate.runs import load_run

    text = read_text(data)
    run = load_run(run_dir, checkpoint, device)
    return evaluate_text(run.model, run.tokenizer, text, stride=stride, batch_size=batch_size, device=run.device)


def validation_text(run) -> tuple[str, str]:
    """The text of a run's own validation split (its prepared val tokens, decoded) and a label
    for it: what `lyre eval RUN` scores when no --data is given."""
    from lyre.data.corpus import load_split

    data_dir = Path(run.config.data.data_dir) if run.config.data.data_dir else RunDir(run.run_dir).data_dir
    if not (data_dir / "meta.json").exists():
        raise LyreError(f"{run.run_dir} has no prepared validation split in {data_dir}; "
                        "pass --data FILE to score a text file")
    tokens = load_split(data_dir, "val")
    return run.tokenizer.decode(tokens.tolist()), f"the validation split ({data_dir})"


# ----------------------------------------------------------------------------------------------
# The answers of a fine-tuned chat model (SFT, DPO)


@dataclass
class AnswerResult:
    loss: float  # mean cross-entropy per answer token (its <|endoftext|> included), in nats
    perplexity: float  # exp(loss)
    tokens: int  # answer tokens scored
    sequences: int  # prompt + answer sequences scored

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate_answers(model: nn.Module, examples: list, pad_id: int, *, batch_size: int = 8,
                     device: torch.device | str | None = None) -> AnswerResult:
    """Loss and perplexity of the answers of `examples` (lyre.finetune.encode.Example: ids and
    the answer mask), the prompt as context only: SFT's validation loss."""
    from lyre.finetune.sft import masked_loss_sum, pad_batch

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LyreError(f"batch_size must be a positive integer; got {batch_size!r}")
    if not examples:
        raise LyreError("no answers to evaluate")
    device = device if device is not None else next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()  # no dropout
    try:
        for start in range(0, len(examples), batch_size):
            x, y = pad_batch(examples[start:start + batch_size], pad_id, False, device)
            s, n = masked_loss_sum(model, x, y)
            total, count = total + s, count + n
    finally:
        model.train(was_training)
    loss = total / max(count, 1)
    return AnswerResult(loss, math.exp(min(loss, 50.0)), count, len(examples))


def answer_examples(run, data: str | Path | None = None) -> tuple[list, str]:
    """The encoded answers of a fine-tuned run's validation split (or of the instruction data
    file `data`), through the run's chat template and the SFT encoding, and a label for them.
    A preference (DPO) run's answers are the chosen ones."""
    from lyre.chat.templates import get_template
    from lyre.finetune.encode import Example
    from lyre.finetune.prepare import DEFAULT_TEMPLATE
    from lyre.finetune.tasks import get_task

    rundir, ft = RunDir(run.run_dir), run.config.extras["finetune"]
    task = get_task(ft.task)
    path = Path(data) if data is not None else rundir.data_dir / "val.jsonl"
    if data is None and (not path.is_file() or path.stat().st_size == 0):
        raise LyreError(f"{run.run_dir} has no validation split in {path} (finetune.val_fraction = 0?); "
                        "pass --data FILE.json (instruction data) or FILE.txt (plain text)")
    if not path.is_file():
        raise LyreError(f"evaluation data {path} not found")
    records, _ = task.read(path)
    template = get_template(rundir.chat_template() or DEFAULT_TEMPLATE)
    block = run.config.model.block_size
    limit = min(ft.max_length, block) if ft.max_length else block
    items, report = task.encode(records, template, run.tokenizer, limit, str(path))
    if not items:
        why = report.problems.summary(str(path)) if report.problems and report.problems.skipped else ""
        raise LyreError(f"{path} holds no answer to score{'; ' + why if why else ''}")
    chosen = ft.task == "dpo"
    if chosen:  # prompt + chosen answer, the answer masked in (what SFT would train)
        items = [Example(p.prompt + p.chosen, [False] * len(p.prompt) + [True] * len(p.chosen))
                 for p in items]
    label = f"the {'chosen ' if chosen else ''}answers of " + (
        str(path) if data is not None else f"the validation split ({path})")
    return items, label


# ----------------------------------------------------------------------------------------------
# `lyre eval RUN [--data FILE]`: what a run is scored on, by its kind

ANSWER_SUFFIXES = (".json", ".jsonl")  # instruction data; any other file is scored as text


@dataclass
class RunEvaluation:
    kind: str  # "text", "answers" or "pairs": the type of `result`
    data: str  # what was scored, in words
    result: Any  # EvalResult, AnswerResult or lyre.zoo.translate.PairScores
    checkpoint: str  # which checkpoint's weights
    tokenizer: str  # the run's tokenizer kind

    def to_dict(self) -> dict:
        return {"data": self.data, "checkpoint": self.checkpoint, "tokenizer": self.tokenizer,
                **self.result.to_dict()}


def evaluate_saved_run(run_dir: str | Path, data: str | Path | None = None, *,
                       stride: int | None = None, batch_size: int = 8, checkpoint: str = "best",
                       device: str | torch.device = "auto") -> RunEvaluation:
    """`lyre eval RUN_DIR [--data FILE]`: load the run and score it (evaluate_loaded_run)."""
    from lyre.generate.runs import load_run

    run_dir = Path(run_dir)
    if RunDir(run_dir).kind() == "classify":
        raise LyreError(f"{run_dir} is a classifier: its accuracy, F1 and loss per split are in "
                        f"{RunDir(run_dir).path / 'classification.json'} (written as it trained); use "
                        f"`lyre classify {run_dir} --file FILE` to label texts")
    if data is not None and not Path(data).is_file():  # before the model loads
        raise LyreError(f"evaluation data {data} not found")
    return evaluate_loaded_run(load_run(run_dir, checkpoint, device), data, stride=stride,
                               batch_size=batch_size)


def evaluate_loaded_run(run, data: str | Path | None = None, *, stride: int | None = None,
                        batch_size: int = 8) -> RunEvaluation:
    """Score a loaded run (lyre.generate.runs.load_run) on `data`, or on what it held out (see the module
    docstring): what `lyre eval` prints."""
    kind = run.config.kind
    found = {"checkpoint": run.checkpoint, "tokenizer": run.tokenizer.kind}
    if kind == "seq2seq":
        from lyre.data.pairs import read_pairs, validation_pairs
        from lyre.zoo.translate import evaluate_pairs

        pairs, label = (read_pairs(str(data)), str(data)) if data is not None else validation_pairs(run)
        scores = evaluate_pairs(run.model, run.tokenizer, pairs, batch_size=batch_size)
        return RunEvaluation("pairs", label, scores, **found)
    if kind in ("sft", "dpo") and (data is None or Path(data).suffix in ANSWER_SUFFIXES):
        examples, label = answer_examples(run, data)
        scores = evaluate_answers(run.model, examples, run.tokenizer.eot_id, batch_size=batch_size,
                                  device=run.device)
        return RunEvaluation("answers", label, scores, **found)
    text, label = (read_text(data), str(data)) if data is not None else validation_text(run)
    scores = evaluate_text(run.model, run.tokenizer, text, stride=stride, batch_size=batch_size,
                           device=run.device)
    return RunEvaluation("text", label, scores, **found)
