"""The batch: rows decoding together in one forward pass per step, steppable by a scheduler.

A `Batch` holds up to `capacity` rows, each one continuation of one prompt, and one KV cache
[layers, rows, heads, max_length, head_dim] allocated once. Every row has its own length: its
keys and values sit in slots 0..len-1 and its positions are those slot numbers, so rows of
different lengths decode together, with a mask that hides the slots a shorter row has not filled
(lyre/engine/cache.py).

    add(prompts, params)  prefill (prompts of similar lengths share one right-padded forward)
                          and sample the first token; `num_samples` rows share one prefill
    step()                feed every row its last token, one forward for all rows, sample the next
                          (a constrained row may feed several: the tokens its grammar forced,
                          taken right after its sampled token; see _jump_forward)
    finished rows leave at once and the last row moves into the hole, so the active rows are
    always slots 0..n-1 and a scheduler can add new requests between two steps (continuous
    batching)

Context overflow, when prompt + output reaches block_size: "stop" ends the row with
finish_reason "length"; "slide" keeps going, each new token conditioned on the last block_size
tokens exactly as nanoGPT's `idx[:, -block_size:]`. A full row's window is re-prefilled every
step: once it moves no cached key is valid (positions shift, and each key depends on tokens that
left). The rows that slide in the same step share one prefill forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from collections.abc import Sequence as Seq
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from lyre.core.errors import LyreError
from lyre.engine.cache import (
    ExtendView,
    copy_row,
    decode_view,
    new_storage,
    prefill_view,
    storage_bytes,
)
from lyre.engine.rows import Row
from lyre.engine.sampling import SamplingConfig, check_int, sample_rows
from lyre.model.contract import capabilities

if TYPE_CHECKING:
    from lyre.engine.engine import Engine


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while generating; every module's own train/eval flag restored afterwards.

    Why not `model.eval()`: the engine must not change the caller's model. A model sampled in
    the middle of training goes on training with dropout on, and one the caller put in eval
    mode stays there. Each module keeps its own flag (`model.train()` would set them all).
    """
    training = [m for m in model.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


def prefill_groups(items: list, length: Callable[[object], int], max_padding: float = 0.25) -> list[list]:
    """Split `items` into groups that share one padded prefill: sorted by length, a group
    takes items while padding them to its longest costs at most `max_padding` of its tokens."""
    groups: list[list] = []
    longest = total = 0  # of the last group
    for n, item in sorted(((length(item), item) for item in items), key=lambda pair: -pair[0]):
        if groups and (len(groups[-1]) + 1) * longest <= (1 + max_padding) * (total + n):
            groups[-1].append(item)
            total += n
        else:
            groups.append([item])
            longest = total = n
    return groups


class Batch:
    """Up to `capacity` rows sharing one preallocated KV cache of `max_length` positions per row.

    The step-level API a scheduler drives: `add()` new requests whenever `free` allows, `step()`
    while `len(batch)`; each returns the rows it advanced, finished ones included (they have
    already left the batch).
    """

    def __init__(self, engine: Engine, capacity: int, max_length: int | None = None) -> None:
        check_int("capacity", capacity, 1, None)
        self.engine = engine
        self.capacity = capacity
        self.block_size = engine.block_size
        self.max_length = min(max_length or self.block_size, self.block_size)
        self.rows: list[Row] = []  # row i lives in cache slot i
        self._storage = None  # a KVCache, a model's own state (new_cache) or None
        able = capabilities(engine.model)
        # Feeding a row several tokens in one step needs a KV cache (ExtendView).
        self._can_jump = able.uses_kv_cache and not able.own_state

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def free(self) -> int:
        return self.capacity - len(self.rows)

    @torch.inference_mode()
    def add(
        self,
        prompts: Seq[Seq[int]],
        params: SamplingConfig | Seq[SamplingConfig],
        tags: Seq | None = None,
    ) -> list[Row]:
        """Prefill `prompts` (token ids) and sample their first tokens; num_samples rows each.

        `params` is one config for all prompts or one per prompt. Prompts of similar lengths
        share one forward pass (right-padded), so a scheduler should add what waits together.
        Returns the rows prompt by prompt (sample 0, 1, ... of the first prompt, then the next).
        """
        engine = self.engine
        if isinstance(params, SamplingConfig):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise LyreError(f"params: {len(params)} configs for {len(prompts)} prompts")
        for p in params:
            engine.check_params(p)
        prompts = [engine.check_ids(p) for p in prompts]
        tags = list(tags) if tags is not None else [None] * len(prompts)
        needed = sum(p.num_samples for p in params)
        if needed > self.free:
            raise LyreError(f"the batch has {self.free} free rows, {needed} needed")
        for ids, p in zip(prompts, params, strict=True):
            positions = min(self.block_size, min(len(ids), self.block_size) + p.max_new_tokens - 1)
            if positions > self.max_length:
                raise LyreError(
                    f"a request needs {positions} cache positions; this batch has {self.max_length}"
                )
        rows = [
            [engine.new_row(ids, p, k, tag) for k in range(p.num_samples)]
            for ids, p, tag in zip(prompts, params, tags, strict=True)
        ]
        for group in prefill_groups(rows, lambda samples: len(self._window(samples[0]))):
            self._start(group)
        return [row for samples in rows for row in samples]

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """Generate one more token for every row; finished rows leave the batch."""
        if not self.rows:
            return []
        full = [slot for slot, row in enumerate(self.rows) if row.cache_len >= self.block_size]
        if full:
            self._slide(full)
        return self._sample(list(self.rows), self._decode())

    # Added for the server's scheduler (issue 6, lyre/serve/scheduler.py): a client that goes
    # away mid-generation must free its row at once, without finishing it.
    @torch.inference_mode()  # moving the last row into the freed slot writes the cache
    def remove(self, row: Row) -> bool:
        """Take an unfinished row out of the batch (its request was cancelled); its slot is free
        for the next `add`. Returns False when the row is not in the batch (already finished)."""
        if not any(r is row for r in self.rows):
            return False
        self._release(row)
        return True

    def reserve(self) -> int:
        """Allocate the KV cache now; returns its bytes. A server does this at start, so the first
        request does not wait for gigabytes of zeros and too little memory shows at once."""
        return storage_bytes(self._cache())  # 0 for a model without one (the bigram baseline)

    # ---- internals -----------------------------------------------------------------------

    def _window(self, row: Row) -> list[int]:
        """The tokens the next prediction conditions on: at most the last block_size."""
        seq = row.prompt + row.tokens
        return seq[-self.block_size :]

    def _start(self, group: list[list[Row]]) -> list[Row]:
        """Prefill the prompts of `group` in one forward; sample their first tokens."""
        live = []
        for samples in group:
            if self._full_at_start(samples[0]):
                for row in samples:
                    row.finish("length")
            else:
                live.append(samples)
        if not live:
            return []
        windows = [self._window(samples[0]) for samples in live]
        first = len(self.rows)
        logits = self._prefill(list(range(first, first + len(live))), windows)
        self.rows += [samples[0] for samples in live]  # slots first, first + 1, ...
        new_rows, new_logits = [], []
        for i, samples in enumerate(live):
            for k, row in enumerate(samples):
                row.cache_len = len(windows[i])
                if k:  # another sample of the same prompt: a copy of its cache row
                    self._copy_slot(first + i, len(self.rows), row.cache_len)
                    self.rows.append(row)
                new_rows.append(row)
                new_logits.append(logits[i])
        return self._sample(new_rows, torch.stack(new_logits))

    def _full_at_start(self, row: Row) -> bool:
        """With overflow="stop", a prompt that fills the context leaves nothing to generate."""
        return row.params.overflow == "stop" and len(row.prompt) >= self.block_size

    def _prefill(self, slots: list[int], windows: list[list[int]]) -> torch.Tensor:
        """One forward over `windows` into cache rows `slots`; the logits [n, V] of each
        window's last token. Shorter windows are padded on the right (see PrefillView)."""
        device = self.engine.device
        lengths = [len(w) for w in windows]
        longest = max(lengths)
        idx = torch.tensor([w + [0] * (longest - len(w)) for w in windows], device=device)
        logits_at = None
        if min(lengths) < longest:
            logits_at = torch.tensor(lengths, device=device) - 1
        view = prefill_view(self._cache(), slots, logits_at)
        with eval_mode(self.engine.model):
            logits, _ = self.engine.model(idx, cache=view)
        return logits[:, -1]

    def _decode(self) -> torch.Tensor:
        """One forward that feeds every row the tokens its cache lacks: its last token, plus the
        ones jump-forward took after it. The logits [n, V] of each row's last token."""
        device = self.engine.device
        lengths = [row.cache_len for row in self.rows]
        counts = [1 + row.jumped for row in self.rows]
        if max(counts) == 1:  # the usual step: one token per row
            ids = torch.tensor([[row.tokens[-1]] for row in self.rows], device=device)
            view = decode_view(self._cache(), lengths, device)
        else:
            longest = max(counts)
            ids = torch.tensor([row.tokens[-n:] + [0] * (longest - n) for row, n in zip(self.rows, counts, strict=True)],
                               device=device)
            view = ExtendView(self._cache(), lengths, counts, device)
        with eval_mode(self.engine.model):
            logits, _ = self.engine.model(ids, cache=view)
        for row, n in zip(self.rows, counts, strict=True):
            row.cache_len += n
            row.jumped = 0
        return logits[:, -1]

    def _slide(self, slots: list[int]) -> None:
        """The caches of these rows are full: re-prefill the window of each row's next
        prediction minus its last token, which the decode step then feeds at position
        block_size - 1. All the windows are block_size - 1 long: one forward for all rows."""
        windows = {slot: self._window(self.rows[slot])[:-1] for slot in slots}
        for group in prefill_groups(slots, lambda slot: len(windows[slot])):
            group.sort()  # cache rows in order: contiguous ones are written as a slice
            if windows[group[0]]:  # empty only with a context of one token
                self._prefill(group, [windows[slot] for slot in group])
            for slot in group:
                self.rows[slot].cache_len = len(windows[slot])

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> list[Row]:
        tokens, logprobs = sample_rows(logits, rows)
        for row, token, logprob in zip(rows, tokens, logprobs, strict=True):
            row.accept(token, logprob, self.block_size)
            self._jump_forward(row)
        for row in rows:
            if row.finished and row in self.rows:
                self._release(row)
        return rows

    def _jump_forward(self, row: Row) -> None:
        """Take now the tokens the row's grammar forces next (`{"name": "` after the `{` of a
        schema), so that the next step feeds them all in one forward instead of one per step:
        jump-forward decoding, as SGLang does. A forward of a few tokens costs about what a
        forward of one does, so a schema's keys and punctuation come almost free.

        Forced tokens draw no random number, so the tokens are the same either way. A row that
        reports logprobs takes them one per step: each needs the logits of its own position.
        """
        if row.matcher is None or row.logprobs is not None or not self._can_jump:
            return
        # The unfed tokens (the sampled one + the jumped ones) must fit in the row's cache.
        room = min(self.block_size, self.max_length) - row.cache_len - 1
        while not row.finished and row.jumped < room:
            token = row.matcher.next_forced()
            if token is None:
                break
            row.accept(token, None, self.block_size)
            row.jumped += 1

    def _release(self, row: Row) -> None:
        """Free the slot of a finished row; the last row moves in so rows stay 0..n-1."""
        slot, last = self.rows.index(row), len(self.rows) - 1
        if slot != last:
            moved = self.rows[last]
            self._copy_slot(last, slot, moved.cache_len)
            self.rows[slot] = moved
        self.rows.pop()

    def _copy_slot(self, src: int, dst: int, length: int) -> None:
        copy_row(self._storage, src, dst, length)

    def _cache(self):
        """The batch's KV cache (or the model's own state, see cache.py), allocated on first
        use; None for a model that needs none."""
        if self._storage is None:
            e = self.engine
            self._storage = new_storage(e.model, self.capacity, self.max_length, e.device, e.dtype)
        return self._storage
