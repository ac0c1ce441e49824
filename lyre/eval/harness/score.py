"""Log-likelihood of a continuation after a context, batched: what multiple choice is scored by.

Exactly as lm-eval-harness's Hugging Face model (lm_eval/models/huggingface.py) computes it, so
that lyre's scores equal lm-eval's on the same model exported with `lyre export-hf`:

1. **Tokenize the pair as one string** (`encode_pair`). Trailing whitespace of the context moves
   to the front of the continuation; then the whole string context + continuation is encoded
   and split at the length of the context's own encoding. Encoding the continuation alone would
   tokenize " Paris" differently at the seam for some tokenizers; the split keeps the model's
   view of the text identical to a single pass over it. An empty context is the
   <|endoftext|> token (lm-eval's prefix token for a tokenizer without a BOS).
2. **Left-truncate** to the model's context: the input is the last block_size + 1 tokens of
   context + continuation, minus the final token (nothing predicts after it).
3. **Sum the log-probabilities** of the continuation tokens under the model's log-softmax at the
   positions just before each of them.

Batching (`loglikelihoods`): the choices of one example share their context, so on a GPT (a
KV-cached model) the context runs once into a KV cache and the choices run on top of it, one row
each (`_score_shared`): for HellaSwag-like tasks (a long context, short endings) that is a
fraction of the tokens lm-eval runs. Requests that cannot share (a lone continuation, a
left-truncated pair, a model without a KV cache) are sorted longest first (similar lengths share
a batch and little padding is wasted), right-padded, and run `batch_size` at a time; causal
attention keeps the padding out of the real positions. Only the continuation positions go
through the LM head and the softmax: the vocabulary projection is the costliest matmul of a
small model, and the context positions' logits are never used. Results come back in request
order, so the scores are deterministic whatever the batch size. (Float sums in another order
than lm-eval's full pass differ in the last bits, ~1e-6; the choices agree unless two choices
tie to that precision.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.core.errors import LyreError
from lyre.engine import eval_mode
from lyre.model.contract import capabilities


@dataclass(frozen=True)
class Request:
    """One (context, continuation) pair as token ids, after encode_pair."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


def encode_pair(tokenizer, context: str, continuation: str) -> Request:
    """Context and continuation ids, split where lm-eval splits them (see the module docstring)."""
    if context == "":  # lm-eval: <|endoftext|> as the context, unless the continuation starts with it
        cont = tokenizer.encode(continuation)
        if tokenizer.eot_id is None:
            raise LyreError("an empty context needs the <|endoftext|> token, which this tokenizer lacks")
        if cont and cont[0] == tokenizer.eot_id:
            return Request(tuple(cont[:1]), tuple(cont[1:]))
        return Request((tokenizer.eot_id,), tuple(cont))
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    n = len(tokenizer.encode(context)) if context else 0
    return Request(tuple(whole[:n]), tuple(whole[n:]))


def max_length(model: nn.Module) -> int | None:
    """The longest input the model takes; None for a model without a context limit."""
    return None if capabilities(model).unbounded_context else model.config.block_size


def loglikelihoods(
    model: nn.Module,
    requests: Sequence[Request],
    *,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[tuple[float, int]]:
    """(summed log-likelihood, continuation tokens) of each request, in request order.

    `on_batch(n)` is called after each forward pass with the requests it scored (progress bars).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LyreError(f"batch_size must be a positive integer; got {batch_size!r}")
    device = device if device is not None else next(model.parameters()).device
    limit = max_length(model)
    rows = []  # (input ids, continuation ids) after truncation
    for r in requests:
        if not r.continuation:
            raise LyreError("a choice encodes to no tokens; every continuation needs at least one")
        ids = list(r.context + r.continuation)
        if limit is not None:
            ids = ids[-(limit + 1):]
        cont = list(r.continuation)[-(len(ids) - 1):]  # a continuation longer than the context limit
        rows.append((ids[:-1], cont))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    plain = []  # requests scored by the padded full-sequence batches
    shared = []  # (context, member indices) of groups whose context runs once
    for context, members in _by_context(requests).items():
        if _can_share(model, context, [requests[i] for i in members], limit):
            shared.append((context, members))
        else:
            plain += members
    shared.sort(key=lambda g: -len(g[0]))  # similar context lengths share a batch
    with eval_mode(model), torch.inference_mode():
        for groups in _chunks(shared, requests, batch_size, limit):
            conts = [[list(requests[i].continuation) for i in members] for _, members in groups]
            scores = _score_shared(model, [list(c) for c, _ in groups], conts, device)
            for (_, members), group_scores in zip(groups, scores, strict=True):
                for i, score in zip(members, group_scores, strict=True):
                    out[i] = (score, len(rows[i][1]))
            if on_batch is not None:
                on_batch(sum(len(m) for _, m in groups))
        plain.sort(key=lambda i: -len(rows[i][0]))  # stable: ties keep their order
        for start in range(0, len(plain), batch_size):
            chunk = plain[start : start + batch_size]
            for i, score in zip(chunk, _score_batch(model, [rows[i] for i in chunk], device), strict=True):
                out[i] = (score, len(rows[i][1]))
            if on_batch is not None:
                on_batch(len(chunk))
    return out


def _by_context(requests: Sequence[Request]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.context, []).append(i)
    return groups


def _chunks(shared: list, requests: Sequence[Request], batch_size: int, limit: int) -> list[list]:
    """Groups in batches of at most batch_size contexts, each batch's padded context plus its
    longest continuation within the model's context (the cache rows hold both)."""
    chunks, chunk, ctx, cont = [], [], 0, 0
    for context, members in shared:
        longest = max(len(requests[i].continuation) for i in members) - 1
        if chunk and (len(chunk) == batch_size or max(ctx, len(context)) + max(cont, longest) > limit):
            chunks.append(chunk)
            chunk, ctx, cont = [], 0, 0
        chunk.append((context, members))
        ctx, cont = max(ctx, len(context)), max(cont, longest)
    return chunks + ([chunk] if chunk else [])


def _can_share(model: nn.Module, context: tuple[int, ...], group: list[Request], limit: int | None) -> bool:
    """Whether a group of requests with one context can run the context once (a KV-cached GPT,
    two or more continuations, nothing left-truncated: truncation would change the prefix)."""
    if not (capabilities(model).uses_kv_cache and isinstance(getattr(model, "lm_head", None), nn.Module)):
        return False
    if len(group) < 2 or limit is None:
        return False
    return all(len(context) + len(r.continuation) <= limit + 1 for r in group)


def _score_shared(model: nn.Module, contexts: list[list[int]], continuations: list[list[list[int]]],
                  device) -> list[list[float]]:
    """Summed log-probs of several continuations of each context, every context run once.

    1. The contexts (right-padded) go through the model once into a KV cache; each context's
       last position predicts the first token of all its continuations.
    2. Every continuation gets a row whose cache holds its context's keys and values; the
       continuations (all but their last token) run on top, right-padded. Row r's tokens take
       positions len(context) + j, and see their own context (keys 0..len(context)-1, the
       padding after it masked) and their own earlier tokens.

    The result is what a full pass over context + continuation computes, without repeating a
    context for each of its choices.
    """
    from lyre.model.gpt import KVCache

    dtype = next(model.parameters()).dtype
    lengths = [len(c) for c in contexts]
    width_ctx = max(lengths)
    cache = KVCache(model.config, len(contexts), width_ctx, device, dtype)
    hidden = model.hidden(_padded(contexts, width_ctx).to(device), cache)
    last = hidden[torch.arange(len(contexts), device=device), torch.tensor(lengths, device=device) - 1]
    first = F.log_softmax(model.lm_head(last).float(), dim=-1).cpu()
    sums = [[float(first[g, c[0]]) for c in conts] for g, conts in enumerate(continuations)]
    flat = [(g, k, c) for g, conts in enumerate(continuations) for k, c in enumerate(conts)]
    width = max(len(c) for _, _, c in flat) - 1  # continuation tokens fed as input
    if width == 0:
        return sums
    owner = torch.tensor([g for g, _, _ in flat], device=device)
    rows = KVCache(model.config, len(flat), width_ctx + width, device, dtype)
    rows.keys[:, :, :, :width_ctx] = cache.keys[:, owner]
    rows.values[:, :, :, :width_ctx] = cache.values[:, owner]
    rows.length = width_ctx
    start = torch.tensor(lengths, device=device)[owner]  # [R] each row's context length
    j = torch.arange(width, device=device)
    rows.positions = start[:, None] + j[None, :]  # [R, W]
    key = torch.arange(width_ctx + width, device=device)
    sees_context = key[None, None, :] < start[:, None, None]  # [R, 1, S] its own context
    sees_own = (key[None, :] >= width_ctx) & (key[None, :] - width_ctx <= j[:, None])  # [W, S] causal
    rows.attn_mask = (sees_context | sees_own[None]).unsqueeze(1)  # [R, 1, W, S]
    inputs = _padded([c[:-1] for _, _, c in flat], width)
    hidden = model.hidden(inputs.to(device), rows)
    batch_index, positions, targets = [], [], []
    for r, (_, _, c) in enumerate(flat):
        batch_index += [r] * (len(c) - 1)
        positions += range(len(c) - 1)
        targets += c[1:]
    logits = model.lm_head(hidden[torch.tensor(batch_index, device=device), torch.tensor(positions, device=device)])
    picked = F.log_softmax(logits.float(), dim=-1).gather(
        1, torch.tensor(targets, device=device).unsqueeze(1)).squeeze(1).cpu().tolist()
    for r, score in zip(batch_index, picked, strict=True):
        g, k, _ = flat[r]
        sums[g][k] += score
    return sums


def _score_batch(model: nn.Module, rows: list[tuple[list[int], list[int]]], device) -> list[float]:
    """Summed continuation log-probs of right-padded rows in one forward pass."""
    width = max(len(ids) for ids, _ in rows)
    inputs = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (ids, _) in enumerate(rows):
        inputs[b, : len(ids)] = torch.tensor(ids)
    # Which positions predict a continuation token: the last len(cont) real positions of a row.
    batch_index, positions, targets = [], [], []
    for b, (ids, cont) in enumerate(rows):
        first = len(ids) - len(cont)
        batch_index += [b] * len(cont)
        positions += range(first, len(ids))
        targets += cont
    logits = _logits_at(model, inputs.to(device), torch.tensor(batch_index, device=device),
                        torch.tensor(positions, device=device))
    logprobs = F.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(1, torch.tensor(targets, device=device).unsqueeze(1)).squeeze(1).cpu()
    sums, at = [], 0
    for _, cont in rows:
        sums.append(float(picked[at : at + len(cont)].sum()))
        at += len(cont)
    return sums


def _logits_at(model: nn.Module, inputs: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits [N, V] at (rows[i], positions[i]): through the LM head only there when the model
    has one (GPT), else from every position's logits (any model of the contract)."""
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Module) and hasattr(model, "hidden"):
        return head(model.hidden(inputs)[rows, positions])
    logits, _ = model(inputs)
    return logits[rows, positions]


def _padded(seqs: list[list[int]], width: int) -> torch.Tensor:
    out = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, ids in enumerate(seqs):
        out[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out
