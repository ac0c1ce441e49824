"""The generation engine: every place that generates text (sample, chat, server) goes through it.

A `Batch` holds up to `capacity` rows, each one continuation of one prompt, and one KV cache
[layers, rows, heads, max_length, head_dim] allocated once. Every row has its own length: its
keys and values sit in slots 0..len-1 and its positions are those slot numbers, so rows of
different lengths decode together in one forward pass per step, with a mask that hides the
slots a shorter row has not filled.

    add(prompts, params)  prefill (one forward per distinct prompt length) and sample the first
                          token; `num_samples` rows share one prefill (the cache is copied)
    step()                feed every row its last token, one forward for all rows, sample the next
    finished rows leave at once and the last row moves into the hole, so the active rows are
    always slots 0..n-1 and a scheduler can add new requests between two steps (continuous
    batching)

Text: each row turns token bytes into text incrementally, so a UTF-8 character split across
BPE tokens is never cut, and it holds back a tail that could still become a stop string, so
what was streamed is never taken back. Joined, the streamed pieces equal the final text.

Context overflow, when prompt + output reaches block_size: "stop" ends the row with
finish_reason "length"; "slide" keeps going, each new token conditioned on the last block_size
tokens exactly as nanoGPT's `idx[:, -block_size:]`. The window is re-prefilled every step: once
it moves no cached key is valid (positions shift, and each key depends on tokens that left).
"""

from __future__ import annotations

import codecs
import functools
import math
import warnings
from collections.abc import Callable, Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.errors import LyreError
from lyre.model.gpt import KVCache

MAX_NEW_TOKENS = 1_000_000
MAX_SAMPLES = 1024
OVERFLOW_POLICIES = ("slide", "stop")


# ----------------------------------------------------------------------------------------------
# Parameters and results


@dataclass
class SamplingConfig:
    """How to choose tokens and when to stop. The knobs mean what they mean in HF transformers."""

    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int = 0  # keep only the k most likely tokens; 0 disables
    top_p: float = 1.0  # keep the most likely tokens that make up top_p of the mass; 1 disables
    repetition_penalty: float = 1.0  # > 1 discourages tokens of the prompt and output (CTRL)
    stop: Seq[str] = ()  # stop strings: the text ends before the first one, also across tokens
    stop_token_ids: Seq[int] | None = None  # None: the tokenizer's <|endoftext|>, if it has one
    num_samples: int = 1  # continuations per prompt, all from one prefill
    seed: int | None = None  # sample i of a prompt uses seed + i; None: fresh randomness
    logprobs: bool = False  # also return log p(token) of every generated token
    top_logprobs: int = 0  # with logprobs: also the k most likely tokens at each step
    overflow: str = "slide"  # at the context limit: "slide" the window or "stop" ("length")

    def validate(self) -> SamplingConfig:
        """Raise LyreError naming the first bad parameter; normalise `stop` to a tuple."""
        _check_int("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        _check_int("top_k", self.top_k, 0, None)
        _check_int("num_samples", self.num_samples, 1, MAX_SAMPLES)
        if self.seed is not None:
            _check_int("seed", self.seed, None, None)
        _check_number("temperature", self.temperature, "must be >= 0", lambda x: x >= 0)
        _check_number("top_p", self.top_p, "must be in (0, 1]", lambda x: 0 < x <= 1)
        _check_number("repetition_penalty", self.repetition_penalty, "must be > 0", lambda x: x > 0)
        if self.overflow not in OVERFLOW_POLICIES:
            raise LyreError(f"overflow must be 'slide' or 'stop'; got {self.overflow!r}")
        if not isinstance(self.logprobs, bool):
            raise LyreError(f"logprobs must be True or False; got {self.logprobs!r}")
        _check_int("top_logprobs", self.top_logprobs, 0, None)
        self.stop = _check_stop_strings(self.stop)
        if self.stop_token_ids is not None:
            if isinstance(self.stop_token_ids, str | bytes) or not isinstance(self.stop_token_ids, Seq):
                raise LyreError(f"stop_token_ids must be a list of token ids; got {self.stop_token_ids!r}")
            for i in self.stop_token_ids:
                _check_int("stop_token_ids", i, 0, None)
        return self


def _check_int(name: str, value, lo: int | None, hi: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LyreError(f"{name} must be an integer; got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise LyreError(f"{name} must be {span}; got {value}")


def _check_number(name: str, value, rule: str, ok: Callable[[float], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LyreError(f"{name} must be a finite number; got {value!r}")
    if not ok(value):
        raise LyreError(f"{name} {rule}; got {value}")


def _check_stop_strings(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):  # one stop string, as HF accepts
        stop = (stop,)
    if not isinstance(stop, Seq):
        raise LyreError(f"stop must be a list of strings; got {stop!r}")
    for s in stop:
        if not isinstance(s, str):
            raise LyreError(f"stop must be a list of strings; got {s!r} ({type(s).__name__}) in it")
        if not s:
            raise LyreError("stop strings must not be empty")
    return tuple(stop)


@dataclass
class Completion:
    """One finished continuation.

    tokens: the generated ids, without a stop token id (the ids that spelled a cut stop string
    stay: a cut can fall inside a token). text: their text, cut before a stop string.
    finish_reason: "stop" (stop token or string) or "length" (max_new_tokens or the context).
    stop_reason: the stop string or stop token id that ended it. logprobs: log p of each token
    under the model's own distribution (before temperature, top-k/p and penalties).
    """

    text: str
    tokens: list[int]
    finish_reason: str
    stop_reason: str | int | None = None
    logprobs: list[float] | None = None
    prompt_tokens: int = 0
    top_logprobs: list[list[tuple[int, float]]] | None = None  # (id, log p) alternatives per token


# ----------------------------------------------------------------------------------------------
# Text: token bytes -> safe text pieces


class TextStream:
    """Token bytes in, text out, without ever splitting a UTF-8 character or leaking a stop string.

    `_pending` holds decoded text not yet released: at most a tail that is the start of a stop
    string. Released text is final; `take()` hands it out. A stop string can only begin inside
    `_pending` (any earlier start would have been held back), so only it is searched.
    """

    def __init__(self, token_bytes: Callable[[int], bytes] | None, stop: Seq[str] = ()) -> None:
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(stop)
        self._pending = ""
        self._done: list[str] = []  # all released text
        self._ready: list[str] = []  # released, not yet taken
        self.stopped_by: str | None = None
        self.closed = False

    def push(self, token_id: int) -> bool:
        """Add one token's bytes; True when a stop string appeared (the text now ends before it)."""
        if self._token_bytes is None or self.closed:
            return False
        return self._add(self._decoder.decode(self._token_bytes(token_id)))

    def close(self) -> bool:
        """No more tokens: bytes of an unfinished character become U+FFFD, everything is released."""
        if self.closed:
            return False
        stopped = self._add(self._decoder.decode(b"", final=True))
        self._release(len(self._pending))
        self.closed = True
        return stopped

    def take(self) -> str:
        """Text released since the last call."""
        piece = "".join(self._ready)
        self._ready.clear()
        return piece

    @property
    def text(self) -> str:
        return "".join(self._done) + self._pending

    def _add(self, new: str) -> bool:
        if not new:
            return False
        searched = len(self._pending)  # no stop string ends inside what was already searched
        self._pending += new
        hit = self._first_stop(searched)
        if hit is not None:
            cut, self.stopped_by = hit
            self._pending = self._pending[:cut]
            self._release(cut)
            self.closed = True
            return True
        self._release(len(self._pending) - self._stop_prefix_len())
        return False

    def _first_stop(self, searched: int) -> tuple[int, str] | None:
        hits = []
        for s in self._stop:
            i = self._pending.find(s, max(0, searched - len(s) + 1))
            if i >= 0:
                hits.append((i, s))
        return min(hits) if hits else None

    def _stop_prefix_len(self) -> int:
        """Length of the longest tail of the pending text that is a proper prefix of a stop string."""
        longest = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def _release(self, n: int) -> None:
        if n > 0:
            piece, self._pending = self._pending[:n], self._pending[n:]
            self._done.append(piece)
            self._ready.append(piece)


# ----------------------------------------------------------------------------------------------
# Sampling: logits -> token, with Hugging Face's order (penalty, temperature, top-k, top-p)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty as HF applies it: seen tokens' logits divided by it (multiplied if < 0)."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def warp_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus); filtered tokens get -inf. logits [..., V]."""
    logits = logits / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # Drop the least likely tokens while their total probability stays <= 1 - top_p;
        # the most likely token always stays.
        sorted_logits, order = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - top_p
        drop[..., -1] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def token_logprobs(logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) under the model's own distribution [V] (before temperature and filters), and
    the `top` most likely (id, log p) pairs of the same log-softmax, most likely first."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    if top <= 0:
        return logprobs[token].item(), []
    values, ids = torch.topk(logprobs, min(top, logprobs.numel()))
    return logprobs[token].item(), list(zip(ids.tolist(), values.tolist(), strict=True))


def sample_rows(logits: torch.Tensor, rows: Seq[Row]) -> tuple[list[int], list[tuple | None]]:
    """Next token of every row from logits [n, V]; each row uses its own params and generator."""
    logits = logits.float()
    processed = logits
    for i, row in enumerate(rows):
        if row.params.repetition_penalty != 1.0:
            if processed is logits:
                processed = logits.clone()
            processed[i] = apply_repetition_penalty(logits[i], row.seen, row.params.repetition_penalty)
    if all(row.params.temperature == 0 for row in rows):
        tokens = processed.argmax(dim=-1).tolist()  # the fast path: one op for the whole batch
    else:
        tokens = [_sample_one(processed[i], row) for i, row in enumerate(rows)]
    logprobs: list[tuple | None] = [None] * len(rows)
    for i, row in enumerate(rows):
        if row.params.logprobs:
            logprobs[i] = token_logprobs(logits[i], tokens[i], row.params.top_logprobs)
    return tokens, logprobs


def _sample_one(logits: torch.Tensor, row: Row) -> int:
    p = row.params
    if p.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(warp_logits(logits, p.temperature, p.top_k, p.top_p), dim=-1)
    return int(torch.multinomial(probs, num_samples=1, generator=row.generator))


# ----------------------------------------------------------------------------------------------
# One row of a batch


class Row:
    """One continuation of one prompt as it is generated: tokens, text, and where it stands.

    A scheduler reads `take_text()` after each step and `completion()` once `finished`.
    `tag` is free for the caller (e.g. a request id).
    """

    def __init__(
        self,
        prompt: list[int],
        params: SamplingConfig,
        stop_ids: frozenset[int],
        text: TextStream,
        generator: torch.Generator,
        seen: torch.Tensor | None,
        tag=None,
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.tag = tag
        self.tokens: list[int] = []
        self.logprobs: list[float] | None = [] if params.logprobs else None
        self.top_logprobs: list | None = [] if params.logprobs and params.top_logprobs else None
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.generator = generator
        self.seen = seen  # bool [V]: tokens of prompt + output, for the repetition penalty
        self.cache_len = 0  # positions of this row held in the KV cache
        self._stop_ids = stop_ids
        self._text = text

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        """All text so far, including a held-back tail that may still be cut."""
        return self._text.text

    def take_text(self) -> str:
        """Text that became final since the last call (safe to show: never taken back)."""
        return self._text.take()

    def completion(self) -> Completion:
        return Completion(
            text=self._text.text,
            tokens=list(self.tokens),
            finish_reason=self.finish_reason or "length",
            stop_reason=self.stop_reason,
            logprobs=self.logprobs,
            prompt_tokens=len(self.prompt),
            top_logprobs=self.top_logprobs,
        )

    def accept(self, token: int, logprob: tuple | None, block_size: int) -> None:
        """Record a sampled token (logprob: token_logprobs' pair) and decide whether the row is done."""
        if token in self._stop_ids:
            self.finish("stop", token)
            return
        self.tokens.append(token)
        if self.logprobs is not None:
            self.logprobs.append(logprob[0])
            if self.top_logprobs is not None:
                self.top_logprobs.append(logprob[1])
        if self.seen is not None:
            self.seen[token] = True
        if self._text.push(token):
            self.finish("stop", self._text.stopped_by)
        elif len(self.tokens) >= self.params.max_new_tokens:
            self.finish("length")
        elif self.params.overflow == "stop" and len(self.prompt) + len(self.tokens) >= block_size:
            self.finish("length")

    def finish(self, reason: str, stop_reason: str | int | None = None) -> None:
        self.finish_reason, self.stop_reason = reason, stop_reason
        if self._text.close():  # flushing a cut character can complete a stop string
            self.finish_reason, self.stop_reason = "stop", self._text.stopped_by


# ----------------------------------------------------------------------------------------------
# Cache views: what GPT.forward sees as its KVCache during one forward pass


class _PrefillView:
    """Fill rows [first, first+n) of the batch cache from position 0 (their old content is dropped)."""

    length = 0

    def __init__(self, storage: KVCache | None, first: int, n: int) -> None:
        self.storage, self.first, self.n = storage, first, n

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, T = slice(self.first, self.first + self.n), k.size(2)
        self.storage.keys[layer, rows, :, :T] = k
        self.storage.values[layer, rows, :, :T] = v
        return k, v  # nothing cached before: attend to the new positions only

    def advance(self, n: int) -> None:
        pass


class _DecodeView:
    """Append one position to each of rows 0..n-1, row i at slot lengths[i]."""

    def __init__(self, storage: KVCache | None, lengths: list[int]) -> None:
        self.storage = storage
        self.n = len(lengths)
        self.length = max(lengths)  # what GPT.forward checks against block_size
        self.span = self.length + 1  # slots any row may attend to after the write
        self.uniform = all(n == self.length for n in lengths)
        if not self.uniform and storage is not None:
            device = storage.keys.device
            self.rows = torch.arange(self.n, device=device)
            self.slots = torch.tensor(lengths, device=device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.storage.keys[layer], self.storage.values[layer]
        if self.uniform:  # all rows at the same length: a plain slice write
            keys[: self.n, :, self.length] = k[:, :, 0]
            values[: self.n, :, self.length] = v[:, :, 0]
        else:
            keys[self.rows, :, self.slots] = k[:, :, 0]
            values[self.rows, :, self.slots] = v[:, :, 0]
        return keys[: self.n, :, : self.span], values[: self.n, :, : self.span]

    def advance(self, n: int) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# The batch: rows decoding together, steppable by a scheduler


def _prefill_groups(items: list, length: Callable[[object], int], max_padding: float = 0.25) -> list[list]:
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
        _check_int("capacity", capacity, 1, None)
        self.engine = engine
        self.capacity = capacity
        self.block_size = engine.block_size
        self.max_length = min(max_length or self.block_size, self.block_size)
        self.rows: list[Row] = []  # row i lives in cache slot i
        self._storage: KVCache | None = None

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
        for group in _prefill_groups(rows, lambda samples: len(self._window(samples[0]))):
            self._start(group)
        return [row for samples in rows for row in samples]

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """Generate one more token for every row; finished rows leave the batch."""
        if not self.rows:
            return []
        for slot, row in enumerate(self.rows):
            if row.cache_len >= self.block_size:
                self._slide(slot, row)
        ids = torch.tensor([[row.tokens[-1]] for row in self.rows], device=self.engine.device)
        logits = self._decode(ids)
        return self._sample(list(self.rows), logits)

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
        if not getattr(self.engine.model, "uses_kv_cache", True):  # no attention, no cache
            return 0
        cache = self._cache()
        return 2 * cache.keys.numel() * cache.keys.element_size()

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
        logits = self._prefill(first, windows)
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

    def _prefill(self, first: int, windows: list[list[int]]) -> torch.Tensor:
        """One forward over `windows` into cache rows first, first + 1, ...; the logits of
        each window's last token. Shorter windows are padded on the right: causal attention
        keeps real tokens from seeing the padding, and decoding overwrites or masks its slots."""
        device = self.engine.device
        lengths = [len(w) for w in windows]
        longest = max(lengths)
        idx = torch.tensor([w + [0] * (longest - len(w)) for w in windows], device=device)
        logits_at = None
        if min(lengths) < longest:
            logits_at = torch.tensor(lengths, device=device) - 1
        logits, _ = self.engine.model(idx, cache=_PrefillView(self._cache(), first, len(windows)),
                                      logits_at=logits_at)
        return logits[:, -1]

    def _decode(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = [row.cache_len for row in self.rows]
        view = _DecodeView(self._cache(), lengths)
        positions = mask = None
        if not view.uniform:  # rows at different lengths: own positions, hide unfilled slots
            positions = torch.tensor(lengths, device=ids.device).unsqueeze(1)
            slots = torch.arange(view.span, device=ids.device)
            mask = (slots <= positions)[:, None, None, :]
        logits, _ = self.engine.model(ids, positions=positions, attn_mask=mask, cache=view)
        for row in self.rows:
            row.cache_len += 1
        return logits[:, -1]

    def _slide(self, slot: int, row: Row) -> None:
        """The cache of `row` is full: re-prefill the window of the next prediction minus its
        last token, which the decode step then feeds at position block_size - 1."""
        window = self._window(row)[:-1]
        if window:
            self._prefill(slot, [window])
        row.cache_len = len(window)

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> list[Row]:
        tokens, logprobs = sample_rows(logits, rows)
        for row, token, logprob in zip(rows, tokens, logprobs, strict=True):
            row.accept(token, logprob, self.block_size)
        for row in rows:
            if row.finished and row in self.rows:
                self._release(row)
        return rows

    def _release(self, row: Row) -> None:
        """Free the slot of a finished row; the last row moves in so rows stay 0..n-1."""
        slot, last = self.rows.index(row), len(self.rows) - 1
        if slot != last:
            moved = self.rows[last]
            self._copy_slot(last, slot, moved.cache_len)
            self.rows[slot] = moved
        self.rows.pop()

    def _copy_slot(self, src: int, dst: int, length: int) -> None:
        if self._storage is not None and length:
            self._storage.keys[:, dst, :, :length] = self._storage.keys[:, src, :, :length]
            self._storage.values[:, dst, :, :length] = self._storage.values[:, src, :, :length]

    def _cache(self) -> KVCache | None:
        # Allocated on first use; models without attention (the bigram baseline) have none.
        if not getattr(self.engine.model, "uses_kv_cache", True):
            return None
        if self._storage is None:
            config, dtype = self.engine.model.config, self.engine.dtype
            self._storage = KVCache(config, self.capacity, self.max_length, self.engine.device, dtype)
        return self._storage


# ----------------------------------------------------------------------------------------------
# The engine


class OneDNNLinear(nn.Linear):
    """nn.Linear that, in inference on the CPU, multiplies by a oneDNN-packed copy of its weight.

    Why: oneDNN's linear, with the weight reordered once into its blocked layout, runs 1.1x (one
    row) to 1.8x (32 rows) faster per decode step than the default CPU path, and the output layer
    alone 3x at 8-32 rows (bench/generate.py, bench/serve_load.py). Same parameters, buffers and
    state_dict as the Linear it was. The packed copy (an opaque tensor, not a buffer) is made on
    first use and made again whenever the weight changed (its version counter), so training the
    model further, or loading weights, is always seen. With gradients on (training) or off the CPU
    it is a plain Linear. Costs a second copy of the weights in memory.
    """

    _packed: torch.Tensor | None = None
    _packed_version: int = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)
        if self._packed is None or self._packed_version != self.weight._version:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 1)
            self._packed_version = self.weight._version
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def __getstate__(self) -> dict:
        state = super().__getstate__().copy()
        state.pop("_packed", None)  # opaque tensors cannot be copied; packed again on first use
        state.pop("_packed_version", None)
        return state


@functools.cache  # a property of the torch build; Engine asks each time it is made
def onednn_linear_works() -> bool:
    """Whether this torch build has oneDNN's packed linear and it computes F.linear."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        w, b, x = torch.randn(8, 4), torch.randn(8), torch.randn(2, 3, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
        return torch.allclose(y, F.linear(x, w, b), atol=1e-5)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def use_onednn_linears(model: nn.Module) -> bool:
    """Make every plain fp32 nn.Linear of `model` a OneDNNLinear, in place; False when this torch
    cannot (then nothing changes)."""
    if not onednn_linear_works():
        return False
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.dtype == torch.float32:
            module.__class__ = OneDNNLinear  # same object, parameters, hooks and state_dict
    return True


def use_cpu_decode_layout(model: nn.Module) -> None:
    """Store every Linear weight of `model` transposed in memory: same values, shapes, state_dict.

    Why: a decode step at batch 1 is one matrix-vector product per weight, and on CPU (MKL) x @ W
    with W stored [in, out] runs ~1.5x faster than with nn.Linear's [out, in] (bench/generate.py;
    it is the layout of GPT-2's Conv1D). F.linear(x, w) computes x @ w.t(), and w.t() is then
    contiguous. Training and checkpoints work unchanged (they copy to contiguous when saving).
    """
    with torch.no_grad():
        for module in model.modules():
            w = getattr(module, "weight", None)
            if isinstance(module, nn.Linear) and w is not None and w.dim() == 2 and w.stride(0) != 1:
                w.data = w.data.t().contiguous().t()  # tied weights share the Parameter: done once


def quantize_int8(model: nn.Module) -> nn.Module:
    """Give `model`'s Linear layers int8 weights in place (dynamic quantization; CPU only).

    Activations stay fp32 and each matmul quantizes its input on the fly. A quarter of the weight
    bytes: 1.5-3x faster decoding on CPU (bench/generate.py), at the price of slightly different
    logits, so tokens can differ from the fp32 model's.
    """
    if next(model.parameters()).device.type != "cpu":
        raise LyreError("int8 weights are for CPU inference; use --device cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice that it moves to torchao
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


class HalfCopyLinear(nn.Module):
    """A Linear that also holds an fp16 copy of its weights, for inputs of a few rows (decoding).

    Why: a decode step of a few rows is bound by reading the weights. fp16 halves the bytes, and
    on a CPU with F16C torch's fp16 matrix-vector kernel runs ~2x faster than fp32's (12 vs 26 ms
    for GPT-2 124M's blocks on 2 cores; bench/generate.py). Inputs of more than `max_rows` rows
    (prompts, batches) use the fp32 weights: without native fp16 arithmetic, fp16 matrix-matrix
    products are slow (at 8 rows already slower than fp32 here). The fp16 copy stays [out, in]:
    transposed, torch's fp16 kernel is ~15x slower.
    The input is rounded to fp16 (relative error ~5e-4), the sums are fp32, the output is fp32.
    """

    def __init__(self, linear: nn.Linear, max_rows: int = 4) -> None:
        super().__init__()
        self.linear, self.max_rows = linear, max_rows
        bias = linear.bias.detach().half() if linear.bias is not None else None
        self.register_buffer("weight16", linear.weight.detach().half().contiguous(), persistent=False)
        self.register_buffer("bias16", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > self.max_rows * x.size(-1):
            return self.linear(x)
        return F.linear(x.half(), self.weight16, self.bias16).to(x.dtype)


def add_fp16_copies(model: nn.Module, max_rows: int = 4) -> nn.Module:
    """Wrap every Linear of `model` in a HalfCopyLinear, in place (CPU inference only).

    Costs half the weights' memory again; logits differ from fp32 by fp16 rounding (~1e-3).
    """
    if next(model.parameters()).device.type != "cpu":
        raise LyreError("fp16 weight copies are for CPU inference; use --device cpu")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, HalfCopyLinear(child, max_rows))
    return model


WEIGHTS = ("fp32", "fp16", "int8")  # how inference may store the Linear weights (--fp16, --int8)


def convert_weights(model: nn.Module, weights: str) -> nn.Module:
    """`model` with its Linear weights as `weights` says: fp32 as trained, fp16 copies for
    decoding, or int8 (see add_fp16_copies and quantize_int8). CPU only for the last two."""
    if weights not in WEIGHTS:
        raise LyreError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    if weights == "fp16":
        return add_fp16_copies(model)
    if weights == "int8":
        return quantize_int8(model)
    return model


class Engine:
    """Generation for one model and tokenizer: `generate` (batched), `stream`, `new_batch`.

    The model is moved to `device` (default: where it is). On CPU its Linear layers multiply by
    oneDNN-packed weights (`use_onednn_linears`), or where this torch cannot, by weights stored
    transposed (`use_cpu_decode_layout`); cpu_layout=False keeps the model as it is.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer=None,
        device: torch.device | str | None = None,
        *,
        cpu_layout: bool = True,
    ) -> None:
        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.model = model.to(self.device).eval()
        if cpu_layout and self.device.type == "cpu" and not use_onednn_linears(self.model):
            use_cpu_decode_layout(self.model)
        self.dtype = param.dtype
        self.tokenizer = tokenizer
        self.block_size: int = model.config.block_size
        self.vocab_size: int = model.config.vocab_size

    # ---- the API -------------------------------------------------------------------------

    def generate(
        self,
        prompts: str | Seq[int] | Seq[str | Seq[int]],
        params: SamplingConfig | Seq[SamplingConfig] | None = None,
        *,
        max_batch: int = 64,
    ) -> list[Completion]:
        """Complete every prompt (text or token ids), batched.

        `params` is one config for all prompts or one per prompt. Returns num_samples
        completions per prompt, prompt by prompt. At most `max_batch` rows decode together (it
        bounds the KV cache); waiting prompts join as rows finish (continuous batching).
        """
        prompts = self._prompt_list(prompts)
        if isinstance(params, SamplingConfig) or params is None:
            params = [params or SamplingConfig()] * len(prompts)
        if len(params) != len(prompts):
            raise LyreError(f"params: {len(params)} configs for {len(prompts)} prompts")
        for p in params:
            self.check_params(p)
        _check_int("max_batch", max_batch, 1, None)
        ids = [self.encode(p) for p in prompts]
        rows_needed = sum(p.num_samples for p in params)
        capacity = min(rows_needed, max(max_batch, max(p.num_samples for p in params)))
        need = max(min(len(i), self.block_size) + p.max_new_tokens for i, p in zip(ids, params, strict=True))
        batch = self.new_batch(capacity, max_length=need)
        rows: list[Row] = []
        i = 0
        while i < len(ids) or batch:
            # Admit every waiting prompt that fits in one add, so they share prefills.
            j, free = i, batch.free
            while j < len(ids) and params[j].num_samples <= free:
                free -= params[j].num_samples
                j += 1
            if j > i:
                rows += batch.add(ids[i:j], params[i:j])
                i = j
            else:
                batch.step()
        return [row.completion() for row in rows]

    def stream(self, prompt: str | Seq[int], params: SamplingConfig | None = None) -> Stream:
        """Text pieces of one continuation as they are generated; see Stream."""
        params = self.check_params(params or SamplingConfig())
        if params.num_samples != 1:
            raise LyreError(f"num_samples must be 1 to stream; got {params.num_samples}")
        ids = self.encode(prompt)
        batch = self.new_batch(1, max_length=min(len(ids), self.block_size) + params.max_new_tokens)
        (row,) = batch.add([ids], params)
        return Stream(batch, row)

    def new_batch(self, capacity: int, max_length: int | None = None) -> Batch:
        """An empty batch for a scheduler to drive (continuous batching)."""
        return Batch(self, capacity, max_length)

    # ---- checks and building blocks ------------------------------------------------------

    def encode(self, prompt: str | Seq[int]) -> list[int]:
        """Prompt text or ids -> ids; an empty prompt starts from <|endoftext|> when there is one."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise LyreError("prompt is text but the engine has no tokenizer; pass token ids")
            ids = self.tokenizer.encode(prompt) if prompt else []
        else:
            ids = self.check_ids(prompt, allow_empty=True)
        if not ids:
            bos = self.tokenizer.eot_id if self.tokenizer is not None else None
            if bos is None:
                raise LyreError(
                    "prompt is empty and this tokenizer has no <|endoftext|> token to start "
                    "from; give a prompt of at least one token"
                )
            ids = [bos]
        return ids

    def check_ids(self, ids: Seq[int], allow_empty: bool = False) -> list[int]:
        """Token ids as a list of ints in the model's vocabulary (tensors and arrays welcome)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, str | bytes) or not isinstance(ids, Seq):
            raise LyreError(f"prompt must be text or a list of token ids; got {type(ids).__name__}")
        ids = list(ids)
        if not ids and not allow_empty:
            raise LyreError("prompt is empty; give at least one token")
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise LyreError(f"prompt token {i!r} is not a token id in 0..{self.vocab_size - 1}")
        return ids

    def check_params(self, params: SamplingConfig) -> SamplingConfig:
        if not isinstance(params, SamplingConfig):
            raise LyreError(f"params must be a SamplingConfig; got {type(params).__name__}")
        params.validate()
        for i in params.stop_token_ids or ():
            if i >= self.vocab_size:
                raise LyreError(f"stop_token_ids: {i} is not a token id in 0..{self.vocab_size - 1}")
        if params.stop and self.tokenizer is None:
            raise LyreError("stop strings need a tokenizer to decode text; pass one to the Engine")
        return params

    def new_row(self, prompt: list[int], params: SamplingConfig, sample: int = 0, tag=None) -> Row:
        if params.stop_token_ids is not None:
            stop_ids = frozenset(params.stop_token_ids)
        else:
            eot = self.tokenizer.eot_id if self.tokenizer is not None else None
            stop_ids = frozenset() if eot is None else frozenset([eot])
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed + sample)
        else:
            generator.seed()
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            seen[torch.tensor(prompt, device=self.device)] = True
        token_bytes = self.tokenizer.token_bytes if self.tokenizer is not None else None
        return Row(prompt, params, stop_ids, TextStream(token_bytes, params.stop), generator, seen, tag)

    def _prompt_list(self, prompts) -> list[str | Seq[int]]:
        if isinstance(prompts, str):
            return [prompts]
        if not isinstance(prompts, Seq) or not prompts:
            raise LyreError("prompts must be a non-empty list of texts or token id lists")
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompts):
            return [prompts]  # one prompt given as token ids
        return list(prompts)


class Stream:
    """Iterate for text pieces; joined they equal `completion.text`, set once the row ends."""

    def __init__(self, batch: Batch, row: Row) -> None:
        self.batch, self.row = batch, row
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            piece = self.row.take_text()
            if piece:
                return piece
            if self.row.finished:
                self.completion = self.row.completion()
                raise StopIteration
            self.batch.step()


# ----------------------------------------------------------------------------------------------
# The reference


@torch.inference_mode()
def generate_without_cache(model: nn.Module, prompts: Seq[Seq[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy tokens by recomputing the last block_size tokens at every step (nanoGPT's loop).

    No cache, no masks: the engine is tested against it, and the benchmark times it as the
    "no cache" baseline. Prompts of equal length run as one batch.
    """
    block = model.config.block_size
    idx = torch.tensor([list(p) for p in prompts], device=next(model.parameters()).device)
    start = idx.size(1)
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block:])
        idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx[:, start:].tolist()
