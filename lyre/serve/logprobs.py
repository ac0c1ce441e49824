"""Log-probabilities of generated tokens, from the engine's rows to OpenAI's two shapes.

The engine records, for every token a row generates with `logprobs=True`, log p(token) under the
model's own distribution and, with `top_logprobs=k`, the k most likely (id, log p) of the same
log-softmax (engine.token_logprobs). The scheduler turns the new ones into `TokenLogprob`s
(text and bytes) as it reports a row's progress; the routes shape them:

    completions  {"tokens", "token_logprobs", "top_logprobs": [{text: log p}], "text_offset"}
    chat         {"content": [{"token", "logprob", "bytes", "top_logprobs": [{...}]}]}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lyre.serve import schemas as S


@dataclass(frozen=True)
class TokenLogprob:
    token: str  # the token's text (bytes that are not whole UTF-8 characters become U+FFFD)
    logprob: float
    raw: bytes
    top: tuple[TokenLogprob, ...] = ()  # the most likely tokens at this step, most likely first


def _entry(token_id: int, logprob: float, token_bytes: Callable[[int], bytes],
           top: tuple[TokenLogprob, ...] = ()) -> TokenLogprob:
    raw = token_bytes(token_id)
    return TokenLogprob(raw.decode("utf-8", "replace"), float(logprob), raw, top)


def new_logprobs(row, start: int, token_bytes: Callable[[int], bytes]) -> list[TokenLogprob]:
    """The log-probs of `row.tokens[start:]` (an engine Row generating with logprobs=True)."""
    out = []
    for i in range(start, len(row.tokens)):
        top = ()
        if row.top_logprobs is not None:
            top = tuple(_entry(t, lp, token_bytes) for t, lp in row.top_logprobs[i])
        out.append(_entry(row.tokens[i], row.logprobs[i], token_bytes, top))
    return out


def completion_logprobs(entries: list[TokenLogprob], offset: int, top: int) -> S.CompletionLogprobs:
    """The completions shape; `offset` is the text offset of the first token (the echoed prompt
    and the text before), `top` the request's `logprobs`. As OpenAI, each top_logprobs entry also
    holds the sampled token, so it can have top + 1 items."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    tops = None
    if top > 0:
        tops = [{_key(alt): alt.logprob for alt in entry.top} | {_key(entry): entry.logprob}
                for entry in entries]
    return S.CompletionLogprobs(tokens=[e.token for e in entries],
                                token_logprobs=[e.logprob for e in entries],
                                top_logprobs=tops, text_offset=offsets)


def _key(entry: TokenLogprob) -> str:
    """A token as a key of completions' top_logprobs: its text, or for bytes that are not whole
    UTF-8 characters OpenAI's "bytes:\\xe2\\x80" spelling (else several would all be U+FFFD)."""
    try:
        return entry.raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in entry.raw)


def chat_logprobs(entries: list[TokenLogprob]) -> S.ChoiceLogprobs:
    """The chat shape: per token its text, log p, bytes and its `top_logprobs` alternatives."""
    return S.ChoiceLogprobs(content=[
        S.TokenLogprob(token=e.token, logprob=e.logprob, bytes=list(e.raw), top_logprobs=[
            S.TopLogprob(token=alt.token, logprob=alt.logprob, bytes=list(alt.raw)) for alt in e.top])
        for e in entries])
