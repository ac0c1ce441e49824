"""The original Transformer of "Attention Is All You Need" (Vaswani et al., 2017): an
encoder-decoder that maps a source sequence to a target sequence (arch seq2seq).

    source ids -> embedding * sqrt(d) + sinusoidal positions -> N encoder layers -> memory
                  [self-attention over the source (padding masked), feed-forward]
    target ids -> embedding * sqrt(d) + sinusoidal positions -> N decoder layers -> head
                  [masked (causal) self-attention, cross-attention to the memory, feed-forward]

Every sub-layer is wrapped as in the paper, `LayerNorm(x + Dropout(sublayer(x)))` (post-norm);
`norm_first = true` gives the pre-norm variant GPT-2 made standard, `x + sublayer(LayerNorm(x))`,
plus a final LayerNorm per stack. One embedding matrix serves the source, the target and the
output projection (the paper shares all three over a joint vocabulary).

The vocabulary is the tokenizer's plus three special ids at its end: PAD (fills short rows of a
batch; masked out of attention and the loss), BOS (starts every decoder input) and EOS (ends
every source and target; generation stops on it). Training is teacher forcing: the decoder reads
BOS + target and is scored on target + EOS. Generation (lyre/zoo/translate.py: greedy and beam
search) encodes the source once, then feeds one token at a time with a `Seq2SeqCache` holding
each layer's cross-attention keys and values (computed once from the memory) and its growing
self-attention keys and values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.core.errors import LyreError
from lyre.model.gpt import sinusoidal_table

N_SPECIAL = 3  # PAD, BOS, EOS: the last three ids of the vocabulary


@dataclass
class Seq2SeqConfig:
    """Shape of the encoder-decoder. The paper's base model: n_layer=6, n_head=8, n_embd=512,
    ffn_ratio=4, dropout=0.1, label_smoothing=0.1."""

    arch: str = "seq2seq"
    vocab_size: int = 64  # the tokenizer's vocabulary + PAD, BOS, EOS
    block_size: int = 64  # at most this many tokens in a source (+EOS) and in a target (+EOS)
    n_layer: int = 3  # encoder layers, and as many decoder layers
    n_head: int = 4
    n_embd: int = 128  # d_model
    ffn_ratio: float = 4.0  # feed-forward width = ffn_ratio * n_embd (d_ff = 2048 for 512)
    dropout: float = 0.1
    norm_first: bool = False  # False: post-norm as in the paper; True: pre-norm
    label_smoothing: float = 0.0  # training loss only; the paper uses 0.1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.arch != "seq2seq":
            raise LyreError(f"model.arch must be seq2seq here; got {self.arch!r}")
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise LyreError(f"model.{name} must be positive; got {getattr(self, name)}")
        if self.vocab_size <= N_SPECIAL:
            raise LyreError(f"model.vocab_size must exceed {N_SPECIAL} (PAD, BOS, EOS); got {self.vocab_size}")
        if self.n_embd % self.n_head:
            raise LyreError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.ffn_ratio <= 0:
            raise LyreError(f"model.ffn_ratio must be positive; got {self.ffn_ratio}")
        for name in ("dropout", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise LyreError(f"model.{name} must be in [0, 1); got {getattr(self, name)}")

    @property
    def pad_id(self) -> int:
        return self.vocab_size - 3

    @property
    def bos_id(self) -> int:
        return self.vocab_size - 2

    @property
    def eos_id(self) -> int:
        return self.vocab_size - 1


# ----------------------------------------------------------------------------------------------
# Building blocks


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_head)) V for every head, queries from `x`, keys and values from
    `source` (= x for self-attention, the encoder's memory for cross-attention).

    `mask` is boolean, True where a query may attend, broadcastable to [B, H, T, S]. With
    `keep_weights` set, the attention probabilities of the last call are kept in `weights`
    [B, H, T, S] (for lyre attention's maps); otherwise torch's fused kernel runs.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        d = config.n_embd
        self.n_head = config.n_head
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d) for _ in range(3))
        self.out_proj = nn.Linear(d, d)
        self.dropout = config.dropout
        self.keep_weights = False
        self.weights: torch.Tensor | None = None

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d] -> [B, H, T, d / H]"""
        B, T, d = x.shape
        return x.view(B, T, self.n_head, d // self.n_head).transpose(1, 2)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k_proj(source)), self.heads(self.v_proj(source))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        q = self.heads(self.q_proj(x))
        if self.keep_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            self.weights = scores.softmax(dim=-1)
            y = self.weights @ v
        else:
            dropout = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        B, H, T, D = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, H * D))


class FeedForward(nn.Module):
    """Two linear maps with a ReLU between, applied to every position alike."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        hidden = int(config.ffn_ratio * config.n_embd)
        self.fc1, self.fc2 = nn.Linear(config.n_embd, hidden), nn.Linear(hidden, config.n_embd)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class Residual(nn.Module):
    """One sub-layer's wrapping: post-norm LayerNorm(x + drop(f(x))), or pre-norm
    x + drop(f(LayerNorm(x)))."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.norm_first = config.norm_first

    def forward(self, x: torch.Tensor, sublayer) -> torch.Tensor:
        if self.norm_first:
            return x + self.drop(sublayer(self.norm(x)))
        return self.norm(x + self.drop(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.self_attn, self.ffn = MultiHeadAttention(config), FeedForward(config)
        self.r1, self.r2 = Residual(config), Residual(config)

    def forward(self, x: torch.Tensor, src_keep: torch.Tensor) -> torch.Tensor:
        x = self.r1(x, lambda h: self.self_attn(h, *self.self_attn.keys_values(h), src_keep))
        return self.r2(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.self_attn, self.cross_attn = MultiHeadAttention(config), MultiHeadAttention(config)
        self.ffn = FeedForward(config)
        self.r1, self.r2, self.r3 = Residual(config), Residual(config), Residual(config)

    def forward(self, x: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor],
                src_keep: torch.Tensor, causal: torch.Tensor | None,
                cache: Seq2SeqCache | None, layer: int) -> torch.Tensor:
        def self_attention(h: torch.Tensor) -> torch.Tensor:
            k, v = self.self_attn.keys_values(h)
            if cache is not None:  # the earlier positions' keys and values, plus these
                k, v = cache.update(layer, k, v)
            return self.self_attn(h, k, v, causal)

        x = self.r1(x, self_attention)
        x = self.r2(x, lambda h: self.cross_attn(h, *memory_kv, src_keep))
        return self.r3(x, self.ffn)


# ----------------------------------------------------------------------------------------------
# The model


class Seq2SeqTransformer(nn.Module):
    uses_kv_cache = False  # the LM engine does not drive it: lyre/zoo/translate.py does
    decoder_only = False  # a source and a target: trained by lyre.train.tasks.seq2seq

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d = config.n_embd
        self.embed = nn.Embedding(config.vocab_size, d)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_layer))
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        # Pre-norm stacks end with a LayerNorm (their residual stream is never normalised
        # otherwise); post-norm layers already end with one.
        self.enc_norm = nn.LayerNorm(d) if config.norm_first else nn.Identity()
        self.dec_norm = nn.LayerNorm(d) if config.norm_first else nn.Identity()
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # one matrix for source, target and output
        self.register_buffer("pos_table", sinusoidal_table(config.block_size, d), persistent=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2 and name != "embed.weight":
                nn.init.xavier_uniform_(p)
        nn.init.normal_(self.embed.weight, mean=0.0, std=d**-0.5)  # * sqrt(d) in use: unit scale

    def num_parameters(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n

    def _embed(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        T = ids.size(1)
        if start + T > self.config.block_size:
            raise LyreError(f"a sequence of {start + T} tokens is longer than model.block_size "
                            f"({self.config.block_size})")
        x = self.embed(ids) * math.sqrt(self.config.n_embd)
        return self.drop(x + self.pos_table[start : start + T])

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory [B, S, d], src_keep [B, 1, 1, S]: True on real source tokens, False on PAD)."""
        src_keep = (src != self.config.pad_id)[:, None, None, :]
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, src_keep)
        return self.enc_norm(x), src_keep

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_keep: torch.Tensor,
               cache: Seq2SeqCache | None = None) -> torch.Tensor:
        """Decoder hidden states [B, T, d] for target inputs `tgt` (BOS + target so far).

        Without a cache the target is right-padded, and causal attention alone keeps real
        positions from seeing the padding after them (padded positions are not scored). With a
        cache, `tgt` continues what the cache holds, and the cross-attention keys and values
        come from it rather than being recomputed.
        """
        start = cache.length if cache is not None else 0
        T = tgt.size(1)
        x = self._embed(tgt, start)
        causal = None
        if cache is None or T > 1:  # one new token may attend to everything before it
            causal = torch.ones(T, start + T, dtype=torch.bool, device=tgt.device).tril(start)
        for i, layer in enumerate(self.decoder):
            memory_kv = cache.cross[i] if cache is not None else layer.cross_attn.keys_values(memory)
            x = layer(x, memory_kv, src_keep, causal, cache, i)
        if cache is not None:
            cache.length += T
        return self.dec_norm(x)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: logits [B, T, V] of every target position; with `targets` (-100 where
        unscored) also the mean cross-entropy, label-smoothed if the config says so."""
        memory, src_keep = self.encode(src)
        logits = self.head(self.decode(tgt, memory, src_keep))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-100, label_smoothing=self.config.label_smoothing)
        return logits, loss

    # ---- generation ------------------------------------------------------------------------

    def start(self, src: torch.Tensor, max_length: int | None = None) -> Seq2SeqCache:
        """Encode `src` once and return the cache that decode_step continues."""
        memory, src_keep = self.encode(src)
        cross = [layer.cross_attn.keys_values(memory) for layer in self.decoder]
        return Seq2SeqCache(self.config, src_keep, cross, max_length or self.config.block_size)

    def decode_step(self, tokens: torch.Tensor, cache: Seq2SeqCache) -> torch.Tensor:
        """Next-token logits [B, V] after feeding `tokens` [B, 1] (or [B, T] at the start)."""
        h = self.decode(tokens, None, cache.src_keep, cache)
        return self.head(h[:, -1])

    def attention_maps(self, src: torch.Tensor, tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        """Attention probabilities of one teacher-forced pass, by kind, each [layers, B, heads,
        queries, keys]: encoder self-attention, decoder (masked) self-attention, cross-attention."""
        kinds = {
            "encoder": [layer.self_attn for layer in self.encoder],
            "decoder": [layer.self_attn for layer in self.decoder],
            "cross": [layer.cross_attn for layer in self.decoder],
        }
        modules = [m for group in kinds.values() for m in group]
        for m in modules:
            m.keep_weights = True
        try:
            with torch.no_grad():
                self(src, tgt)
            return {kind: torch.stack([m.weights for m in group]) for kind, group in kinds.items()}
        finally:
            for m in modules:
                m.keep_weights, m.weights = False, None

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]


class Seq2SeqCache:
    """What the decoder keeps between generation steps, for B rows (sources or beams):

    src_keep  the source padding mask [B, 1, 1, S]
    cross     per layer, the cross-attention keys and values of the memory (computed once)
    keys, values  per layer, the self-attention keys and values of the target so far
    """

    def __init__(self, config: Seq2SeqConfig, src_keep: torch.Tensor,
                 cross: list[tuple[torch.Tensor, torch.Tensor]], max_length: int) -> None:
        B, H, D = src_keep.size(0), config.n_head, config.n_embd // config.n_head
        self.src_keep, self.cross, self.max_length = src_keep, cross, max_length
        shape = (config.n_layer, B, H, max_length, D)
        dtype = cross[0][0].dtype if cross else torch.float32
        self.keys = torch.zeros(shape, device=src_keep.device, dtype=dtype)
        self.values = torch.zeros(shape, device=src_keep.device, dtype=dtype)
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.size(2)
        if end > self.max_length:
            raise LyreError(f"the target outgrew the cache: {end} positions > {self.max_length}")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (in that order, repeats allowed): beam search's survivors."""
        self.src_keep = self.src_keep[rows]
        self.cross = [(k[rows], v[rows]) for k, v in self.cross]
        self.keys, self.values = self.keys[:, rows], self.values[:, rows]
