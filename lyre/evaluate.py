"""Evaluation numbers that compare across models and tokenizers: loss, perplexity, bits per byte.

Loss (nats per token) and perplexity depend on the tokenizer: a BPE token holds several
characters, so a BPE model has a higher loss per token than a char model on the same text even
when it predicts the text better. Bits per byte divides the total loss by the UTF-8 bytes the
scored tokens stand for (Tokenizer.token_bytes), which is the same for every tokenizer, so it
ranks a char and a BPE model on the same text fairly.

Scoring uses lyre.data's exact sliding window: windows of block_size tokens every `stride`
tokens, and every token except the first is scored exactly once. With stride < block_size each
scored token (past the first window) sees at least block_size - stride tokens of context: a
smaller stride costs more compute and gives a lower, fairer loss. The default stride is
block_size (non-overlapping windows, the same as the end-of-training evaluation).

    lyre eval RUN_DIR --data heldout.txt [--stride S] [--json]
    evaluate_run("runs/iliad-char", "heldout.txt").bits_per_byte
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from lyre.data import evaluate_loss
from lyre.errors import LyreError
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
    from lyre.runs import load_run

    text = read_text(data)
    run = load_run(run_dir, checkpoint, device)
    return evaluate_text(run.model, run.tokenizer, text, stride=stride, batch_size=batch_size, device=run.device)


def validation_text(run) -> tuple[str, str]:
    """The text of a run's own validation split (its prepared val tokens, decoded) and a label
    for it: what `lyre eval RUN` scores when no --data is given."""
    from lyre.data import load_split

    data_dir = Path(run.config.data.data_dir) if run.config.data.data_dir else Path(run.run_dir) / "data"
    if not (data_dir / "meta.json").exists():
        raise LyreError(f"{run.run_dir} has no prepared validation split in {data_dir}; "
                        "pass --data FILE to score a text file")
    tokens = load_split(data_dir, "val")
    return run.tokenizer.decode(tokens.tolist()), f"the validation split ({data_dir / 'val.bin'})"
