"""Data: text files -> token ids on disk -> training windows and exact evaluation.

The pieces, one module each:
    sources.py   the inputs (files, folders, globs; txt, jsonl, json, parquet; gz, zst) as a
                 stream of documents, bad files and records found and reported
    prepare.py   the pipeline of `lyre prepare`: tokenizer, parallel encoding, document split,
                 dedup, resumable shards + manifest.json
    shards.py    the on-disk format and `Tokens`, one split's shards read as one sequence
    loader.py    the streaming loader of training: random or document-aligned windows, each
                 process reading only its rows, its position saved in checkpoints
    corpus.py    (this module) the entry points most callers need: prepare, load_split,
                 get_batch (random windows), and exact sliding-window evaluation

The token files have no header, so `np.memmap` reads them without loading them: training
touches only the windows it samples, however large the corpus.
"""

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lyre.core.errors import LyreError
from lyre.data.loader import WindowLoader, _to_device
from lyre.data.prepare import PrepareOptions, prepare_corpus
from lyre.data.shards import SPLITS, Tokens, is_prepared, load_meta, load_split
from lyre.data.sources import DEFAULT_CHUNK_BYTES, file_sha256, iter_text, safe_cut

__all__ = ["SPLITS", "Tokens", "count_eval_tokens", "evaluate_loss", "file_sha256", "get_batch",
           "is_prepared", "iter_eval_windows", "load_meta", "load_split", "prepare"]

IGNORE_INDEX = -100  # targets with this value are not scored (same as the model's loss)

# The text readers live in sources.py; these names stay for the tests and old callers.
_safe_cut = safe_cut


def _iter_text(path: Path, start: int, end: int, chunk_bytes: int, progress=None) -> Iterator[str]:
    """The text of bytes [start, end) of an uncompressed file, in chunks (sources.iter_text)."""
    return iter_text(Path(path), None, start, end, chunk_bytes, progress)


# --------------------------------------------------------------------------------------------
# prepare: corpus -> shards / tokenizer / manifest.json (lyre/data/prepare.py)


def prepare(
    corpus: Sequence[Path | str] | Path | str,
    tokenizer_spec: str,
    out_dir: Path,
    val_fraction: float = 0.1,
    force: bool = False,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    **options,
) -> dict:
    """Tokenize `corpus` (files, folders, globs) into the data directory `out_dir`; return its
    manifest. The same pipeline as `lyre prepare` (keyword `options`: the other fields of
    lyre.data.prepare.PrepareOptions); a directory already prepared from the same inputs and
    options is left as it is."""
    opts = PrepareOptions(tokenizer=tokenizer_spec, val_fraction=val_fraction, force=force,
                          chunk_bytes=chunk_bytes, **options)
    return prepare_corpus(corpus, out_dir, opts).manifest


# --------------------------------------------------------------------------------------------
# Training batches


def get_batch(
    tokens: Tokens | np.ndarray,
    batch_size: int,
    block_size: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `batch_size` random windows of block_size+1 tokens: x = window[:-1], y = window[1:].

    Offsets come from `generator`, so restoring its state (e.g. from a checkpoint) replays
    exactly the same batches. Returns int64 tensors of shape (batch_size, block_size). The
    loader (lyre.data.loader.WindowLoader) draws the same offsets and adds document-aligned
    windows and per-process rows.
    """
    return WindowLoader(tokens, block_size, generator).draw(batch_size, device)


# --------------------------------------------------------------------------------------------
# Exact evaluation: every target token of a split scored exactly once


def _eval_windows(
    n_tokens: int, block_size: int, stride: int | None, max_windows: int | None
) -> tuple[int, list[tuple[int, int]]]:
    """Plan the evaluation windows: (window length, [(start, how many leading targets to skip)]).

    Window k starts at k*stride; the last one is aligned to the end of the split so the final
    token is covered. A window skips the targets the previous window already scored, so with
    stride < block_size every scored token still sees at least block_size - stride tokens of
    context, yet none is counted twice. `max_windows` keeps an evenly spaced subset (the same
    one every time), for quick estimates during training.
    """
    if n_tokens < 2:
        raise LyreError(f"cannot evaluate a split of {n_tokens} token(s); need at least 2")
    if block_size < 1:
        raise LyreError(f"block_size must be positive, got {block_size}")
    stride = block_size if stride is None else stride
    if not 1 <= stride <= block_size:
        raise LyreError(f"eval stride must be between 1 and block_size={block_size}, got {stride}")
    length = min(block_size, n_tokens - 1)  # targets are positions 1..n_tokens-1
    last = n_tokens - 1 - length
    if max_windows is not None and max_windows < 1:
        raise LyreError(f"max_windows must be positive, got {max_windows}")
    starts = list(range(0, last, stride)) + [last]
    if max_windows is not None and max_windows < len(starts):
        picks = np.unique(np.linspace(0, len(starts) - 1, max_windows).round().astype(int))
        starts = [starts[i] for i in picks]
    plan, scored_up_to = [], 0  # targets at positions <= scored_up_to are already counted
    for s in starts:
        skip = max(0, scored_up_to - s)
        plan.append((s, skip))
        scored_up_to = s + length
    return length, plan


def iter_eval_windows(
    tokens: np.ndarray,
    block_size: int,
    stride: int | None = None,
    batch_size: int = 8,
    max_windows: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield int64 (x, y) batches of windows covering the split; y is -100 where not scored.

    Each target position 1..len(tokens)-1 is scored exactly once over all batches (or, with
    max_windows, at most once). stride defaults to block_size: non-overlapping windows.
    """
    length, plan = _eval_windows(len(tokens), block_size, stride, max_windows)
    for b in range(0, len(plan), batch_size):
        rows = plan[b : b + batch_size]
        w = np.stack([tokens[s : s + length + 1] for s, _ in rows]).astype(np.int64)
        x = torch.from_numpy(w[:, :-1].copy())
        y = torch.from_numpy(w[:, 1:].copy())
        for r, (_, skip) in enumerate(rows):
            y[r, :skip] = IGNORE_INDEX
        yield x, y


def count_eval_tokens(
    tokens: np.ndarray | int,
    block_size: int,
    stride: int | None = None,
    max_windows: int | None = None,
) -> int:
    """How many targets iter_eval_windows scores (len(tokens) - 1 unless max_windows cuts it)."""
    n = int(tokens) if isinstance(tokens, int | np.integer) else len(tokens)
    length, plan = _eval_windows(n, block_size, stride, max_windows)
    return sum(length - skip for _, skip in plan)


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    tokens: np.ndarray,
    block_size: int,
    stride: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    max_windows: int | None = None,
) -> dict:
    """Mean cross-entropy per scored token over the split, and its perplexity.

    Returns {"loss", "perplexity", "tokens"}. The model follows the GPT contract
    model(idx, targets) -> (logits, loss); we sum the per-token losses ourselves because the
    model's own mean is per batch, and batches score different numbers of tokens.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in iter_eval_windows(tokens, block_size, stride, batch_size, max_windows):
            x, y = _to_device(x, device), _to_device(y, device)
            logits, _ = model(x, y)
            loss_sum = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)),
                y.view(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += loss_sum.item()
            count += int((y != IGNORE_INDEX).sum().item())
    finally:
        model.train(was_training)
    loss = total / count
    perplexity = math.exp(loss) if loss < 700 else math.inf
    return {"loss": loss, "perplexity": perplexity, "tokens": count}
