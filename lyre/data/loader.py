"""The streaming loader: training windows from a split's shards, reproducible to the batch.

A batch is `rows` windows of block_size + 1 tokens (x = window[:-1], y = window[1:]). Where the
windows start comes from one seeded torch.Generator:

    align="none"      anywhere in the split: a uniform start over all shards together, so a
                      shard is drawn from in proportion to its length (the classic nanoGPT draw;
                      for one shard it is exactly lyre.data.corpus.get_batch)
    align="document"  at a document start: the <|endoftext|> that begins each document, so every
                      window opens with it as BOS and then the document's first tokens (nanochat's
                      rows); each document is equally likely

and in which order (`order`):

    order="random"      each start drawn by the generator (the default)
    order="sequential"  one pass after the other through the split, window after window (every
                        block_size tokens, or every document start), as llm.c and nanochat read
                        their shards: each token is seen once per pass

The position is the generator (random; the Trainer saves it in every checkpoint through the
task's `generators()`) or the next window's index and the pass (sequential: `state_dict()`,
saved with the task's state), so a resumed run draws exactly the windows the uninterrupted run
would have. `position()` names the last window drawn (shard, offset), for logs and checks.

Several processes (DDP/FSDP): every process draws the starts of the whole global batch, so the
generators stay equal, but reads only the windows of its own rows (`part`): rank r of W reads
rows [r*rows/W, (r+1)*rows/W), disjoint from every other rank's, and no process reads more
tokens than its own share.
"""

from __future__ import annotations

import numpy as np
import torch

from lyre.core.errors import LyreError
from lyre.data.shards import Tokens

ALIGNS = ("none", "document")
ORDERS = ("random", "sequential")


class WindowLoader:
    """Random windows of `tokens` (a split), drawn by `generator`."""

    def __init__(self, tokens: Tokens | np.ndarray, block_size: int, generator: torch.Generator,
                 *, align: str = "none", bos_id: int | None = None, order: str = "random") -> None:
        if align not in ALIGNS:
            raise LyreError(f"data.align must be one of {', '.join(ALIGNS)}; got {align!r}")
        if order not in ORDERS:
            raise LyreError(f"data.order must be one of {', '.join(ORDERS)}; got {order!r}")
        self.tokens, self.block_size, self.generator, self.align = tokens, block_size, generator, align
        self.order = order
        self.next_window, self.passes = 0, 0  # sequential: the next window and full passes done
        n = len(tokens)
        if n < block_size + 1:
            raise LyreError(f"the data split has {n} tokens, fewer than block_size+1="
                            f"{block_size + 1}; use a smaller block_size or more text")
        self.starts: np.ndarray | None = None  # document starts, for align="document"
        if align == "document":
            self.starts = self._document_starts(bos_id)
        self.last: int | None = None  # global offset of the last window drawn

    def _document_starts(self, bos_id: int | None) -> np.ndarray:
        if bos_id is None:
            raise LyreError("data.align=document needs a tokenizer with <|endoftext|>; this data's "
                            "has none")
        if isinstance(self.tokens, Tokens):
            starts = self.tokens.positions_of(bos_id)
        else:
            starts = np.flatnonzero(np.asarray(self.tokens) == bos_id)
        starts = starts[starts <= len(self.tokens) - self.block_size - 1]
        if not len(starts):
            raise LyreError("data.align=document found no document that begins with "
                            "<|endoftext|> and has block_size+1 tokens after it; prepare the data "
                            "with `lyre prepare` from many documents, or use data.align=none")
        return starts

    def draw(self, rows: int, device: torch.device | str = "cpu",
             part: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `rows` windows as int64 (x, y) of shape (rows, block_size). With `part`,
        only those rows are read; the others stay zero (another process reads them)."""
        if self.order == "sequential":
            offsets = [self._next_offset() for _ in range(rows)]
        elif self.starts is None:
            offsets = torch.randint(len(self.tokens) - self.block_size, (rows,),
                                    generator=self.generator).tolist()
        else:
            picks = torch.randint(len(self.starts), (rows,), generator=self.generator).tolist()
            offsets = [int(self.starts[i]) for i in picks]
        self.last = offsets[-1]
        keep = range(rows)[part] if part is not None else range(rows)
        windows = np.zeros((rows, self.block_size + 1), dtype=np.int64)
        for r in keep:
            windows[r] = self.tokens[offsets[r] : offsets[r] + self.block_size + 1]
        w = torch.from_numpy(windows)
        x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
        return _to_device(x, device), _to_device(y, device)

    def _next_offset(self) -> int:
        """Sequential order: the start of the next window, starting a new pass at the end."""
        windows = (len(self.starts) if self.starts is not None
                   else (len(self.tokens) - 1) // self.block_size)
        if self.next_window >= windows:
            self.next_window, self.passes = 0, self.passes + 1
        k, self.next_window = self.next_window, self.next_window + 1
        return int(self.starts[k]) if self.starts is not None else k * self.block_size

    def state_dict(self) -> dict:
        """What the generator does not hold: the sequential position (JSON-safe)."""
        return {"next_window": self.next_window, "passes": self.passes, **self.position()}

    def load_state_dict(self, state: dict) -> None:
        self.next_window = int(state.get("next_window", 0))
        self.passes = int(state.get("passes", 0))

    def position(self) -> dict:
        """Where the last window began: its shard and offset in it (None before the first)."""
        if self.last is None:
            return {"shard": None, "offset": None}
        if isinstance(self.tokens, Tokens):
            shard, offset = self.tokens.locate(self.last)
            return {"shard": self.tokens.paths[shard].name, "offset": offset}
        return {"shard": None, "offset": self.last}


def _to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy to `device`; on CUDA via pinned memory so the copy can overlap with compute."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
