"""Sampling: the parameters of a request (SamplingConfig) and logits -> next token.

The knobs mean what they mean in Hugging Face transformers and are applied in its order:
repetition penalty, then temperature, then top-k, then top-p (a test compares them with
transformers' logits processors).

The DEFAULT_* values come from lyre/core/sampling_defaults.py, the one place they live (it has no
torch, so the command line reads them cheaply); they are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lyre.constrain import Constraint
from lyre.core.errors import LyreError
from lyre.core.sampling_defaults import (  # re-exported: lyre.engine.DEFAULT_*
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
)

if TYPE_CHECKING:
    from lyre.engine.rows import Row


MAX_NEW_TOKENS = 1_000_000
MAX_SAMPLES = 1024
OVERFLOW_POLICIES = ("slide", "stop")


@dataclass
class SamplingConfig:
    """How to choose tokens and when to stop (docs/generation.md has the table)."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE  # 0 means greedy (argmax)
    top_k: int = DEFAULT_TOP_K  # keep only the k most likely tokens; 0 disables
    top_p: float = DEFAULT_TOP_P  # keep the most likely tokens that make up top_p of the mass
    repetition_penalty: float = DEFAULT_REPETITION_PENALTY  # > 1 discourages seen tokens (CTRL)
    stop: Seq[str] = ()  # stop strings: the text ends before the first one, also across tokens
    stop_token_ids: Seq[int] | None = None  # None: the tokenizer's <|endoftext|>, if it has one
    num_samples: int = 1  # continuations per prompt, all from one prefill
    seed: int | None = None  # sample i of a prompt uses seed + i; None: fresh randomness
    logprobs: bool = False  # also return log p(token) of every generated token
    top_logprobs: int = 0  # with logprobs: also the k most likely tokens at each step
    overflow: str = "slide"  # at the context limit: "slide" the window or "stop" ("length")
    constraint: Constraint | None = None  # the output must match it (docs/structured.md)

    def validate(self) -> SamplingConfig:
        """Raise LyreError naming the first bad parameter; normalise `stop` to a tuple."""
        check_int("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        check_int("top_k", self.top_k, 0, None)
        check_int("num_samples", self.num_samples, 1, MAX_SAMPLES)
        if self.seed is not None:
            check_int("seed", self.seed, None, None)
        _check_number("temperature", self.temperature, "must be >= 0", lambda x: x >= 0)
        _check_number("top_p", self.top_p, "must be in (0, 1]", lambda x: 0 < x <= 1)
        _check_number("repetition_penalty", self.repetition_penalty, "must be > 0", lambda x: x > 0)
        if self.overflow not in OVERFLOW_POLICIES:
            raise LyreError(f"overflow must be 'slide' or 'stop'; got {self.overflow!r}")
        if not isinstance(self.logprobs, bool):
            raise LyreError(f"logprobs must be True or False; got {self.logprobs!r}")
        check_int("top_logprobs", self.top_logprobs, 0, None)
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise LyreError(f"constraint must be a lyre.constrain.Constraint; got {self.constraint!r}")
        self.stop = _check_stop_strings(self.stop)
        if self.stop_token_ids is not None:
            if isinstance(self.stop_token_ids, str | bytes) or not isinstance(self.stop_token_ids, Seq):
                raise LyreError(f"stop_token_ids must be a list of token ids; got {self.stop_token_ids!r}")
            for i in self.stop_token_ids:
                check_int("stop_token_ids", i, 0, None)
        return self


def check_int(name: str, value, lo: int | None, hi: int | None) -> None:
    """A LyreError naming `name` unless `value` is an int in lo..hi (None: unbounded)."""
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


# ----------------------------------------------------------------------------------------------
# logits -> token, with Hugging Face's order (penalty, temperature, top-k, top-p)


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
    """Next token of every row from logits [n, V]; each row uses its own params and generator.

    A constrained row takes the token its grammar forces (fast-forward), or samples among the
    tokens its grammar allows: the others' logits are -inf before any other processing.
    """
    logits = logits.float()
    processed = mask_constrained(logits, rows)
    for i, row in enumerate(rows):
        if row.params.repetition_penalty != 1.0:
            if processed is logits:
                processed = logits.clone()
            processed[i] = apply_repetition_penalty(processed[i], row.seen, row.params.repetition_penalty)
    if all(row.params.temperature == 0 for row in rows):
        tokens = processed.argmax(dim=-1).tolist()  # the fast path: one op for the whole batch
    else:
        tokens = [_sample_one(processed[i], row) for i, row in enumerate(rows)]
    for i, row in enumerate(rows):
        forced = row.matcher.next_forced() if row.matcher is not None else None
        if forced is not None:
            tokens[i] = forced
    logprobs: list[tuple | None] = [None] * len(rows)
    for i, row in enumerate(rows):
        if row.params.logprobs:
            logprobs[i] = token_logprobs(logits[i], tokens[i], row.params.top_logprobs)
    return tokens, logprobs


def mask_constrained(logits: torch.Tensor, rows: Seq[Row]) -> torch.Tensor:
    """`logits` with -inf where a constrained row's grammar forbids the token (a copy if any
    row is constrained). Rows with a forced token skip the mask: they will not sample."""
    picked = [i for i, row in enumerate(rows) if row.matcher is not None and row.matcher.next_forced() is None]
    if not picked:
        return logits
    from lyre.constrain.matcher import allowed_masks  # llguidance only where it is used

    allowed = allowed_masks([rows[i].matcher for i in picked], logits.size(-1), logits.device)
    for k, i in enumerate(picked):
        if not allowed[k].any():  # a dead end (nothing the vocabulary has can go on): end the row
            allowed[k, rows[i].matcher.eos] = True
            rows[i].matcher.dead_end = True
    logits = logits.clone()
    index = torch.tensor(picked, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
    return logits


def _sample_one(logits: torch.Tensor, row: Row) -> int:
    p = row.params
    if p.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(warp_logits(logits, p.temperature, p.top_k, p.top_p), dim=-1)
    return int(torch.multinomial(probs, num_samples=1, generator=row.generator))
