"""One continuation being generated (Row) and what it becomes when finished (Completion)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lyre.engine.sampling import SamplingConfig
from lyre.engine.text import TextStream

if TYPE_CHECKING:
    from lyre.constrain.matcher import RowMatcher


@dataclass
class Completion:
    """One finished continuation.

    tokens: the generated ids, without a stop token id (the ids that spelled a cut stop string
    stay: a cut can fall inside a token). text: their text, cut before a stop string.
    finish_reason: "stop" (stop token or string) or "length" (max_new_tokens or the context).
    stop_reason: the stop string or stop token id that ended it. logprobs: log p of each token
    under the model's own distribution (before temperature, top-k/p and penalties).
    With a constraint (SamplingConfig.constraint): constraint_unfinished is True when the text
    does not complete the grammar (it ran out of max_new_tokens or context, or a stop string
    cut it); forced_tokens counts the tokens the grammar forced (fast-forward, not sampled);
    constraint_error says why the grammar could not go on (rare: a dead end or a parser limit).
    """

    text: str
    tokens: list[int]
    finish_reason: str
    stop_reason: str | int | None = None
    logprobs: list[float] | None = None
    prompt_tokens: int = 0
    top_logprobs: list[list[tuple[int, float]]] | None = None  # (id, log p) alternatives per token
    constraint_unfinished: bool = False
    forced_tokens: int = 0
    constraint_error: str | None = None


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
        matcher: RowMatcher | None = None,
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
        self.jumped = 0  # forced tokens taken after the last sampled one, not yet fed (Batch)
        self.matcher = matcher  # the constraint's state (lyre/constrain/matcher.py), or None
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
        m = self.matcher
        return Completion(
            constraint_unfinished=m is not None and not m.accepting,
            forced_tokens=m.forced_count if m is not None else 0,
            constraint_error=_constraint_error(m),
            text=self._text.text,
            tokens=list(self.tokens),
            finish_reason=self.finish_reason or "length",
            stop_reason=self.stop_reason,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            prompt_tokens=len(self.prompt),
        )

    def accept(self, token: int, logprob: tuple | None, block_size: int) -> None:
        """Record a sampled token and decide whether the row is done."""
        if token in self._stop_ids or (self.matcher is not None and token == self.matcher.eos):
            self.finish("stop", token)  # a constrained row ends with EOS only where its grammar may
            return
        if self.matcher is not None and not self.matcher.accept(token):
            self.matcher.dead_end = True  # the mask let a token through that the grammar refuses:
            self.finish("stop", self.matcher.eos)  # end here, without it, rather than write it
            return
        self.tokens.append(token)
        if self.logprobs is not None:  # logprob: token_logprobs' (log p, top alternatives)
            self.logprobs.append(logprob[0])
            if self.top_logprobs is not None:
                self.top_logprobs.append(logprob[1])
        if self.seen is not None:
            self.seen[token] = True
        if self._text.push(token):
            self.finish("stop", self._text.stopped_by)
        elif self.matcher is not None and self.matcher.stopped:
            self.finish("stop", self.matcher.eos)  # the grammar is complete: nothing may follow
        elif len(self.tokens) >= self.params.max_new_tokens:
            self.finish("length")
        elif self.params.overflow == "stop" and len(self.prompt) + len(self.tokens) >= block_size:
            self.finish("length")

    def finish(self, reason: str, stop_reason: str | int | None = None) -> None:
        self.finish_reason, self.stop_reason = reason, stop_reason
        if self._text.close():  # flushing a cut character can complete a stop string
            self.finish_reason, self.stop_reason = "stop", self._text.stopped_by


def _constraint_error(matcher: RowMatcher | None) -> str | None:
    if matcher is None:
        return None
    if matcher.dead_end:
        return "no token of the vocabulary can continue the constrained text"
    return matcher.error or None
