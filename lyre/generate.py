"""Sampling text from a model: one prompt, token by token, with a KV cache.

`sample_next` turns logits into the next token (greedy, temperature, top-k, top-p);
`generate_tokens` runs the model (prefill once, then one token per step, re-prefilling a sliding
window when the context is full); `stream_text` turns token ids into text pieces without ever
splitting a multi-byte UTF-8 character.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from lyre.errors import LyreError
from lyre.model.gpt import KVCache


@dataclass
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    seed: int | None = None

    def validate(self) -> None:
        if self.max_new_tokens <= 0 or self.max_new_tokens > 1_000_000:
            raise LyreError(f"max_new_tokens must be in 1..1000000; got {self.max_new_tokens}")
        if self.temperature < 0:
            raise LyreError(f"temperature must be >= 0; got {self.temperature}")
        if self.top_k < 0:
            raise LyreError(f"top_k must be >= 0; got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise LyreError(f"top_p must be in (0, 1]; got {self.top_p}")


def sample_next(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """logits [B, V] -> next token ids [B, 1]."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        logits = _top_p_filter(logits, cfg.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probabilities add up to top_p (nucleus sampling)."""
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    # Drop a token when the tokens before it already reach top_p; the first token always stays.
    drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


@torch.no_grad()
def generate_tokens(
    model: nn.Module,
    prompt: list[int],
    cfg: SamplingConfig,
    *,
    stop_ids: Iterable[int] = (),
    device: torch.device | str = "cpu",
) -> Iterator[int]:
    """Yield new token ids one at a time. The prompt must fit the context (crop it before)."""
    cfg.validate()
    if not prompt:
        raise LyreError("the prompt is empty; give at least one token")
    block = model.config.block_size
    if len(prompt) > block:
        raise LyreError(f"prompt of {len(prompt)} tokens is longer than the context ({block})")
    model.eval()
    generator = torch.Generator(device=device)
    if cfg.seed is not None:
        generator.manual_seed(cfg.seed)
    else:
        generator.seed()
    stop_ids = set(stop_ids)
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.config, 1, device=device, dtype=dtype)
    tokens = list(prompt)
    logits, _ = model(torch.tensor([tokens], device=device), cache=cache)
    for _ in range(cfg.max_new_tokens):
        next_id = int(sample_next(logits[:, -1, :], cfg, generator))
        if next_id in stop_ids:
            return
        tokens.append(next_id)
        yield next_id
        if cache.length >= block:
            # Context full: start again from the last block-1 tokens (a sliding window).
            cache.reset()
            window = tokens[-(block - 1):]
            logits, _ = model(torch.tensor([window], device=device), cache=cache)
        else:
            logits, _ = model(torch.tensor([[next_id]], device=device), cache=cache)


def stream_text(token_bytes, ids: Iterable[int]) -> Iterator[str]:
    """Decode ids to text pieces; bytes of a partial UTF-8 character wait for the rest."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token_id in ids:
        piece = decoder.decode(token_bytes(token_id))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def crop_prompt(prompt: list[int], block_size: int, reserve: int = 1) -> tuple[list[int], int]:
    """Keep the last (block_size - reserve) tokens; returns (cropped prompt, tokens dropped)."""
    keep = max(1, block_size - reserve)
    dropped = max(0, len(prompt) - keep)
    return prompt[dropped:], dropped


def encode_prompt(tokenizer, text: str, block_size: int) -> tuple[list[int], int]:
    """Prompt text -> ids that fit the context, and how many tokens were cropped from the left.

    An empty prompt starts from <|endoftext|> when the tokenizer has it, else from a newline.
    """
    if text:
        ids = tokenizer.encode(text)
    elif tokenizer.eot_id is not None:
        ids = [tokenizer.eot_id]
    else:
        try:
            ids = tokenizer.encode("\n")
        except LyreError:
            raise LyreError("the prompt is empty and this tokenizer has no start token; give a prompt") from None
    return crop_prompt(ids, block_size)


def stream(
    model: nn.Module,
    tokenizer,
    prompt: str,
    cfg: SamplingConfig | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[str]:
    """Text pieces of one continuation of `prompt`, as they are produced."""
    cfg = cfg or SamplingConfig()
    ids, _ = encode_prompt(tokenizer, prompt, model.config.block_size)
    stop = [tokenizer.eot_id] if tokenizer.eot_id is not None else []
    new_ids = generate_tokens(model, ids, cfg, stop_ids=stop, device=device)
    yield from stream_text(tokenizer.token_bytes, new_ids)


def generate(
    model: nn.Module,
    tokenizer,
    prompt: str,
    cfg: SamplingConfig | None = None,
    device: torch.device | str = "cpu",
) -> str:
    """The whole continuation of `prompt` as one string."""
    return "".join(stream(model, tokenizer, prompt, cfg, device))
