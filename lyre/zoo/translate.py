"""Decoding an encoder-decoder (lyre.model.seq2seq): greedy and beam search, and scoring pairs.

Both decoders encode the source once and then feed the decoder one token at a time through a
`Seq2SeqCache`, so a step costs one position, not the whole target so far.

    greedy     take the most likely token at every step; many sources decode together.
    beam       keep the `beam` most likely partial targets; each step extends every one by every
               token and keeps the best `beam` of those. A finished target (EOS) is ranked by
               its log-probability divided by the GNMT length penalty ((5 + len) / 6) ** alpha,
               so short outputs are not favoured just for having fewer terms (Wu et al., 2016;
               the Transformer paper uses beam 4, alpha 0.6). beam = 1 is greedy.

    translate(model, tokenizer, ["3 May 1999"], beam=4) -> ["1999-05-03"]
    evaluate_pairs(model, tokenizer, pairs)  -> loss, perplexity, exact-match accuracy
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from lyre.core.errors import LyreError
from lyre.data.pairs import (
    IGNORE_INDEX,
    Pair,
    Specials,
    collate,
    encode_pairs,
    encode_source,
    pad_rows,
)
from lyre.model.contract import capabilities


def _check_beam(beam: int) -> None:
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise LyreError(f"beam width must be an integer >= 1; got {beam!r}")


def _steps(model, max_length: int | None) -> int:
    """Decoder steps: each feeds one position, so at most block_size of them, which writes at
    most block_size - 1 target tokens and the EOS (the longest target training allows)."""
    limit = model.config.block_size
    if max_length is None:
        return limit
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise LyreError(f"max length must be a positive integer; got {max_length!r}")
    return min(max_length + 1, limit)


def _cut(ids: list[int], eos: int, steps: int) -> list[int]:
    """The target before EOS; without one, the tokens that fit (steps - 1)."""
    return ids[: ids.index(eos)] if eos in ids else ids[: steps - 1]


def _banned(model) -> list[int]:
    """PAD and BOS are never outputs."""
    return [model.config.pad_id, model.config.bos_id]


@torch.no_grad()
def greedy_decode(model, sources: list[list[int]], max_length: int | None = None,
                  batch_size: int = 64) -> list[list[int]]:
    """The greedy target ids (without EOS) of each source (ids ending in EOS)."""
    out: list[list[int]] = []
    for b in range(0, len(sources), batch_size):
        out += _greedy_batch(model, sources[b : b + batch_size], _steps(model, max_length))
    return out


def _greedy_batch(model, sources: list[list[int]], steps: int) -> list[list[int]]:
    c = model.config
    device = next(model.parameters()).device
    cache = model.start(pad_rows(sources, c.pad_id).to(device), steps)
    tokens = torch.full((len(sources), 1), c.bos_id, dtype=torch.long, device=device)
    done = torch.zeros(len(sources), dtype=torch.bool, device=device)
    written = []
    for _ in range(steps):
        logits = model.decode_step(tokens, cache)
        logits[:, _banned(model)] = -math.inf
        tokens = logits.argmax(dim=-1, keepdim=True)
        written.append(tokens)
        done |= tokens[:, 0] == c.eos_id
        if done.all():
            break
    return [_cut(row, c.eos_id, steps) for row in torch.cat(written, dim=1).tolist()]


@torch.no_grad()
def beam_search(model, source: list[int], beam: int = 4, max_length: int | None = None,
                alpha: float = 0.6) -> list[int]:
    """The best target ids (without EOS) of one source by beam search."""
    _check_beam(beam)
    c = model.config
    steps = _steps(model, max_length)
    device = next(model.parameters()).device
    cache = model.start(torch.tensor([source] * beam, device=device), steps)
    tokens = torch.full((beam, 1), c.bos_id, dtype=torch.long, device=device)
    # Every beam starts as the same empty target: only the first may grow at step one.
    scores = torch.full((beam,), -math.inf, device=device)
    scores[0] = 0.0
    seqs: list[list[int]] = [[] for _ in range(beam)]
    finished: list[tuple[float, list[int]]] = []
    for step in range(steps):
        logp = F.log_softmax(model.decode_step(tokens, cache).float(), dim=-1)
        logp[:, _banned(model)] = -math.inf
        total = (scores[:, None] + logp).view(-1)
        top_scores, top = total.topk(min(2 * beam, total.numel()))
        keep_rows, keep_tokens, keep_scores = [], [], []
        for score, index in zip(top_scores.tolist(), top.tolist(), strict=True):
            row, token = divmod(index, logp.size(-1))
            if score == -math.inf:
                break
            if token == c.eos_id:  # a finished hypothesis, ranked by its normalised score
                finished.append((score / ((5 + step + 1) / 6) ** alpha, seqs[row]))
            else:
                keep_rows.append(row)
                keep_tokens.append(token)
                keep_scores.append(score)
            if len(keep_rows) == beam:
                break
        best_done = max((s for s, _ in finished), default=-math.inf)
        # The live beams can only lose log-probability; stop when none can overtake the best
        # finished one even with the most generous length penalty left.
        best_live = max(keep_scores, default=-math.inf) / ((5 + steps) / 6) ** alpha
        if not keep_rows or (len(finished) >= beam and best_done >= best_live):
            break
        missing = beam - len(keep_rows)  # fewer live candidates than beams: pad with dead ones
        cache.reorder(torch.tensor(keep_rows + [keep_rows[0]] * missing, device=device))
        seqs = [seqs[r] + [t] for r, t in zip(keep_rows, keep_tokens, strict=True)] + [[]] * missing
        scores = torch.tensor(keep_scores + [-math.inf] * missing, device=device)
        tokens = torch.tensor(keep_tokens + [keep_tokens[0]] * missing, device=device).unsqueeze(1)
    if not finished:  # the length limit came first: the best live hypothesis
        finished = [(float(scores.max()), seqs[int(scores.argmax())])]
    return _cut(max(finished, key=lambda f: f[0])[1], c.eos_id, steps)


def require_encoder_decoder(model) -> None:
    """A language model continues text; only an encoder-decoder translates."""
    if capabilities(model).decoder_only:
        raise LyreError(f"model.arch={model.config.arch} is a language model (it continues text); "
                        "translating needs an encoder-decoder run (arch seq2seq); use `lyre sample`")


def translate(model, tokenizer, texts: list[str], *, beam: int = 1,
              max_length: int | None = None) -> list[str]:
    """Translate each text (greedy when beam is 1)."""
    require_encoder_decoder(model)
    _check_beam(beam)
    c = model.config
    sources = [encode_source(tokenizer, t, c.eos_id, c.block_size, f"source {t[:40]!r}") for t in texts]
    if beam == 1:
        outputs = greedy_decode(model, sources, max_length)
    else:
        outputs = [beam_search(model, s, beam, max_length) for s in sources]
    return [tokenizer.decode(ids) for ids in outputs]


def translate_prompt(model, tokenizer, prompt: str | None) -> str:
    """What `lyre sample` writes for an encoder-decoder: the greedy translation of the prompt."""
    if not prompt:
        raise LyreError("this run is an encoder-decoder: give the source to translate with --prompt "
                        "TEXT (or use `lyre translate`)")
    return translate(model, tokenizer, [prompt])[0]


# ----------------------------------------------------------------------------------------------
# Scoring


@dataclass
class PairScores:
    loss: float  # mean cross-entropy per target token (EOS included), teacher-forced, no smoothing
    perplexity: float
    exact_match: float | None  # fraction of pairs whose greedy (or beam) output equals the target
    pairs: int  # pairs scored
    tokens: int  # target tokens scored

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def pair_loss(model, encoded: list[tuple[list[int], list[int]]], batch_size: int = 64) -> tuple[float, int]:
    """(summed cross-entropy, tokens) over the pairs' targets, without label smoothing."""
    specials = Specials.of(model.config)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for b in range(0, len(encoded), batch_size):
        src, tgt_in, tgt_out = (t.to(device) for t in collate(encoded[b : b + batch_size], specials))
        logits, _ = model(src, tgt_in)
        total += F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(),
                                 ignore_index=IGNORE_INDEX, reduction="sum").item()
        count += int((tgt_out != IGNORE_INDEX).sum())
    return total, count


def evaluate_pairs(model, tokenizer, pairs: list[Pair], *, exact_match: bool = True, beam: int = 1,
                   batch_size: int = 64) -> PairScores:
    """Teacher-forced loss of the targets and, with exact_match, the fraction decoded exactly."""
    if not pairs:
        raise LyreError("no pairs to evaluate")
    _check_beam(beam)
    was_training = model.training
    model.eval()
    try:
        encoded = encode_pairs(pairs, tokenizer, Specials.of(model.config), model.config.block_size)
        total, count = pair_loss(model, encoded, batch_size)
        accuracy = None
        if exact_match:
            if beam == 1:
                outputs = greedy_decode(model, [s for s, _ in encoded], batch_size=batch_size)
            else:
                outputs = [beam_search(model, s, beam) for s, _ in encoded]
            texts = [tokenizer.decode(o) for o in outputs]
            accuracy = sum(t == p.target for t, p in zip(texts, pairs, strict=True)) / len(pairs)
    finally:
        model.train(was_training)
    loss = total / count
    return PairScores(loss, math.exp(min(loss, 700)), accuracy, len(pairs), count)
