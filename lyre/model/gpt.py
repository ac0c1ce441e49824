"""A GPT decoder in plain PyTorch.

token embedding (+ learned or sinusoidal positions) -> N pre-norm blocks of
[causal self-attention, MLP] with residuals -> final norm -> LM head (tied to the embedding).

The options cover GPT-2 (learned positions, LayerNorm, GELU, biases, tied head) and the changes
the field has found since (rotary positions, RMSNorm, ReLU^2, no biases). Attention runs on
torch's scaled_dot_product_attention; `reference_attention` spells the same math out step by
step and a test checks that both agree.

The model's contract (lyre/model/contract.py) is small: `forward(idx, targets=None, cache=None)`
returns (logits, loss) and `hidden(idx, cache=None)` the final hidden states. A `cache` is how the
generation engine prefills a prompt once and then decodes one token at a time; everything a
batch of prompts of different lengths needs (per-row positions, an attention mask, which
position's logits to compute) travels inside that cache object, not in the signature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.core.errors import LyreError

POSITION_KINDS = ("learned", "sinusoidal", "rope", "none")
# Positions no weight depends on: such a GPT may run (or be fine-tuned) at a longer context than
# it was trained at. Only learned positions have a table of block_size rows.
WEIGHTLESS_POSITIONS = tuple(kind for kind in POSITION_KINDS if kind != "learned")
NORM_KINDS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "relu", "relu2")
ATTENTION_IMPLS = ("sdpa", "reference")


@dataclass
class GPTConfig:
    """Shape and options of the model. GPT-2 124M is GPTConfig() with vocab_size=50257."""

    arch: str = "gpt"  # the model family (lyre.model.registry); this file builds "gpt"
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024  # the context length
    vocab_size: int = 50257
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorm, as GPT-2
    pos: str = "learned"  # learned | sinusoidal | rope | none
    norm: str = "layernorm"  # layernorm | rmsnorm
    act: str = "gelu"  # gelu | relu | relu2
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * n_embd
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    attn_impl: str = "sdpa"  # sdpa | reference

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject shapes and option names that cannot build a model, with a readable reason."""
        for name, value, allowed in (
            ("arch", self.arch, ("gpt",)),
            ("pos", self.pos, POSITION_KINDS),
            ("norm", self.norm, NORM_KINDS),
            ("act", self.act, ACTIVATIONS),
            ("attn_impl", self.attn_impl, ATTENTION_IMPLS),
        ):
            if value not in allowed:
                raise LyreError(f"model.{name} must be one of {', '.join(allowed)}; got {value!r}")
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if getattr(self, name) <= 0:
                raise LyreError(f"model.{name} must be positive; got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise LyreError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise LyreError("rotary positions need an even head size (n_embd / n_head)")
        if not 0.0 <= self.dropout < 1.0:
            raise LyreError(f"model.dropout must be in [0, 1); got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_ratio * self.n_embd)


# ----------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """Scale by the root mean square; cheaper than LayerNorm and as good in practice."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """The fixed position encodings of "Attention Is All You Need": sin on even, cos on odd."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


def rope_tables(length: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angle of every (position, frequency pair), [length, head_dim/2]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x1, x2) of the head dimension by its position's angle.

    x: [B, H, T, D]; cos, sin: [B, 1, T, D/2]. Relative position then shows up in q.k directly.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.type_as(x)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention written out: softmax(Q K^T / sqrt(d) + causal mask) V, for every head.

    q: [B, H, T, D], k and v: [B, H, S, D]. Without `mask`, query t sees keys 0..t (+ S - T, so
    queries that continue a cache line up with the end of the keys). `mask` [B, 1, T, S] is True
    where attention is allowed.
    """
    T, S = q.size(-2), k.size(-2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class KVCache:
    """Keys and values of every layer, preallocated to the context length.

    A prompt is prefilled (T positions written at once), then one position is appended per
    decode step. `length` is how many positions are filled, the same for every row; new tokens
    take positions length, length + 1, ... The three optional fields are for batches whose rows
    stand at different lengths (the engine's cache views set them; a plain cache leaves them
    None): `positions` [B, T] each new token's position, `attn_mask` [B, 1, T, S] True where a
    query may attend to a key, `logits_at` [B] which of the T positions' logits each row wants
    (default: the last).
    """

    positions: torch.Tensor | None = None
    attn_mask: torch.Tensor | None = None
    logits_at: torch.Tensor | None = None

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_length: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.max_length = max_length or config.block_size
        shape = (config.n_layer, batch_size, config.n_head, self.max_length, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions of `layer`; return all keys and values filled so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_length:
            raise LyreError(f"KV cache is full: {end} positions > capacity {self.max_length}")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n: int) -> None:
        """Called once per forward pass, after every layer wrote its n new positions."""
        self.length += n

    def reset(self) -> None:
        self.length = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.impl = config.attn_impl
        # One matrix makes q, k and v: a single larger matmul is faster than three.
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # [B, T, C] -> [B, H, T, D]: every head attends independently.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        attn_mask = None
        if cache is not None:
            # The new keys and values join those of earlier positions; attend to all of them.
            k, v = cache.update(layer, k, v)
            attn_mask = cache.attn_mask
        y = self._attend(q, k, v, attn_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _attend(self, q, k, v, attn_mask):
        if self.impl == "reference":
            return reference_attention(q, k, v, attn_mask)
        dropout = self.dropout if self.training else 0.0
        if attn_mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        if q.size(2) == k.size(2):  # no cache prefix: the plain causal case, flash-friendly
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        if q.size(2) == 1:  # one new token attends to everything cached so far
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        T, S = q.size(2), k.size(2)
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.act = config.act
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.act == "gelu":
            h = F.gelu(h, approximate="tanh")  # GPT-2's tanh approximation
        elif self.act == "relu":
            h = F.relu(h)
        else:  # relu2: ReLU squared, found better than GELU in modern speedruns
            h = F.relu(h).square()
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope, cache, layer):
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    """The decoder: embeddings -> blocks -> final norm (`hidden`) -> LM head (`forward`)."""

    uses_kv_cache = True  # generation keeps each layer's keys and values (a KVCache)

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        modules = dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=make_norm(config),
        )
        if config.pos == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # The same matrix reads tokens in and scores them out: fewer parameters, better loss.
            self.lm_head.weight = self.transformer.wte.weight
        self._register_position_tables()
        self.apply(self._init_weights)
        # GPT-2: scale the init of layers that write into the residual stream by 1/sqrt(2 N),
        # so its variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _register_position_tables(self) -> None:
        # Fixed tables are buffers, not parameters, and are not saved in checkpoints.
        c = self.config
        if c.pos == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(c.block_size, c.n_embd), persistent=False)
        elif c.pos == "rope":
            cos, sin = rope_tables(c.block_size, c.head_dim, c.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once (tied weights once). non_embedding drops token/position tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
        return n

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final hidden states [B, T, n_embd], after the last norm: what the LM head scores.

        idx: [B, T] token ids. With a `cache`, the tokens continue what it holds: positions start
        at cache.length (or are cache.positions), attention also sees the cached keys, and the
        new keys and values are stored. Classification heads and embeddings pool these states.
        """
        T = idx.size(1)
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size and self.config.pos != "none":
            raise LyreError(
                f"sequence of {start + T} tokens is longer than the context ({self.config.block_size})"
            )
        positions = cache.positions if cache is not None else None
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device).unsqueeze(0)
        x = self.transformer.drop(self.transformer.wte(idx) + self._absolute_positions(positions))
        rope = self._rope(positions)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, rope, cache, layer)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits, and the mean loss when `targets` are given.

        idx: [B, T] token ids. targets: [B, T] next-token ids, -100 where the loss must ignore a
        position (padding, the prompt in instruction tuning). Without a cache: logits [B, T, V]
        for every position (training, scoring). With a cache (generation): logits [B, 1, V] of
        only the position each row needs, cache.logits_at or else the last, because the
        vocabulary projection is the costliest matmul and generation needs one position.
        Returns (logits, mean cross-entropy or None).
        """
        x = self.hidden(idx, cache)
        if cache is not None and targets is None:
            at = cache.logits_at
            if at is None:
                x = x[:, -1:]
            else:
                x = x[torch.arange(x.size(0), device=x.device), at].unsqueeze(1)
            return self.lm_head(x), None
        logits = self.lm_head(x)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
        )
        return logits, loss

    def _absolute_positions(self, positions: torch.Tensor) -> torch.Tensor | float:
        if self.config.pos == "learned":
            return self.transformer.wpe(positions)
        if self.config.pos == "sinusoidal":
            return self.pos_table[positions]
        return 0.0

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.config.pos != "rope":
            return None
        # [B or 1, T, D/2] -> [B or 1, 1, T, D/2] to broadcast over heads
        return self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on matrices (Linear and embedding weights) only, not on biases and gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
