"""Recurrent language models: the vanilla RNN, the LSTM and the GRU (arch rnn, lstm, gru).

Before attention, a language model read its text one token at a time and squeezed everything it
had read into a fixed-size state vector:

    embedding -> dropout -> N recurrent layers (torch's nn.RNN / nn.LSTM / nn.GRU) -> dropout
              -> linear head (optionally tied to the embedding) -> next-token logits

    RNN   h_t = tanh(W x_t + U h_{t-1} + b): simple, but its gradient through time is a product of
          T Jacobians, which vanishes or explodes; it forgets within a few dozen tokens.
    LSTM  a separate cell c_t updated additively (c_t = f * c_{t-1} + i * g), read through an
          output gate; the additive path lets gradients survive hundreds of steps (Hochreiter &
          Schmidhuber, 1997). We start the forget gate's bias at 1 so that it remembers by
          default (Jozefowicz et al., 2015).
    GRU   the LSTM's idea with two gates and no separate cell (Cho et al., 2014).

Training uses the same random windows of block_size tokens as the GPT: each window starts from a
zero state and the gradient flows back through at most block_size steps (truncated
backpropagation through time). Generation is where a recurrent model differs: the state *is* the
whole past, so each new token costs one step, whatever the length of the text so far, and a
sample can run past the training window (the state just keeps going; how well it generalises
past block_size is another matter, docs/zoo.md).

The generation engine allocates the state through `model.new_cache(...)` (a `RecurrentState`,
below) instead of a KV cache; it supports the row operations the engine needs (prefill some rows
from scratch, step every row by one token, copy a row into another slot).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from lyre.core.errors import LyreError

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # h, or (h, c) for the LSTM


@dataclass
class RecurrentConfig:
    """Shape of a recurrent LM; `arch` picks the cell (the subclasses below set its default)."""

    arch: str = "lstm"
    vocab_size: int = 65
    block_size: int = 128  # the training window (truncated BPTT); generation may run past it
    n_layer: int = 2
    n_embd: int = 128  # embedding width
    n_hidden: int = 256  # state width of every layer
    dropout: float = 0.0  # on the embeddings, between layers and before the head
    tie_embeddings: bool = False  # head weight = embedding (needs n_hidden == n_embd)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.arch not in CELLS:
            raise LyreError(f"model.arch must be one of {', '.join(CELLS)} here; got {self.arch!r}")
        for name in ("vocab_size", "block_size", "n_layer", "n_embd", "n_hidden"):
            if getattr(self, name) <= 0:
                raise LyreError(f"model.{name} must be positive; got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise LyreError(f"model.dropout must be in [0, 1); got {self.dropout}")
        if self.tie_embeddings and self.n_hidden != self.n_embd:
            raise LyreError(
                f"model.tie_embeddings needs n_hidden == n_embd (got {self.n_hidden} and "
                f"{self.n_embd}): the head reuses the embedding matrix"
            )


# One config class per family: the registry builds a family by `arch`, whose default must be
# the family's name. They differ in nothing else.
@dataclass
class RNNConfig(RecurrentConfig):
    arch: str = "rnn"


@dataclass
class LSTMConfig(RecurrentConfig):
    arch: str = "lstm"


@dataclass
class GRUConfig(RecurrentConfig):
    arch: str = "gru"


class RecurrentLM(nn.Module):
    """Token embedding -> stacked RNN/LSTM/GRU -> linear head. The lyre model contract
    (lyre.model.contract) with a recurrent state in place of a KV cache."""

    uses_kv_cache = False  # no attention: the engine asks new_cache() for a RecurrentState
    decoder_only = True
    unbounded_context = True  # generation may run past block_size: nothing grows with length

    def __init__(self, config: RecurrentConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.rnn = CELLS[config.arch](
            config.n_embd, config.n_hidden, num_layers=config.n_layer, batch_first=True,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
        )
        self.lm_head = nn.Linear(config.n_hidden, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._init_weights()

    @property
    def is_lstm(self) -> bool:
        return self.config.arch == "lstm"

    def _init_weights(self) -> None:
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.lm_head.bias)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.02)
        if self.is_lstm:  # gates are ordered input, forget, cell, output: forget bias := 1
            H = self.config.n_hidden
            for name, param in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    with torch.no_grad():
                        param[H : 2 * H].fill_(1.0)
                elif name.startswith("bias_hh"):
                    with torch.no_grad():
                        param[H : 2 * H].zero_()

    def num_parameters(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if non_embedding else n

    # ---- the contract ----------------------------------------------------------------------

    def hidden(self, idx: torch.Tensor, cache: StateView | None = None) -> torch.Tensor:
        """[B, T, n_hidden]: the top layer's state after each token.

        With a cache, the rows start from the state it holds (None: zeros) and the state after
        each row's last real token is written back (`cache.logits_at` marks it in a right-padded
        prefill; packing the sequences keeps padding out of the state).
        """
        x = self.drop(self.wte(idx))
        state = cache.read() if cache is not None else None
        if cache is not None and cache.logits_at is not None:
            lengths = (cache.logits_at + 1).cpu()
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out_packed, state = self.rnn(packed, state)
            out, _ = nn.utils.rnn.pad_packed_sequence(out_packed, batch_first=True,
                                                      total_length=idx.size(1))
        else:
            out, state = self.rnn(x, state)
        if cache is not None:
            cache.write(state)
        return self.drop(out)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: StateView | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, loss): every position's logits, or with a cache only the position it asks
        for (cache.logits_at, else the last); the loss ignores targets of -100."""
        h = self.hidden(idx, cache)
        if cache is not None and targets is None:
            if cache.logits_at is None:
                return self.lm_head(h[:, -1:]), None
            rows = torch.arange(idx.size(0), device=idx.device)
            return self.lm_head(h[rows, cache.logits_at].unsqueeze(1)), None
        logits = self.lm_head(h)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-100)
        return logits, loss

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on matrices only, as for the GPT."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def new_cache(
        self, batch_size: int, max_length: int | None = None, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> RecurrentState:
        """What the generation engine keeps between steps: the state of `batch_size` rows.
        Its size does not depend on max_length: a recurrent model's memory is fixed."""
        return RecurrentState(self.config, batch_size, device, dtype)


# ----------------------------------------------------------------------------------------------
# The generation state: what a KV cache is to the GPT


class RecurrentState:
    """h (and c for the LSTM) of every layer for `batch_size` rows (slots).

    The engine's row operations: `prefill_view(slots, logits_at)` starts rows from a zero state,
    `decode_view(lengths)` steps rows 0..n-1 by one token, `copy_row(src, dst)` duplicates a row
    (several samples of one prompt, or moving a row into a freed slot). A finished row is
    dropped by simply no longer using its slot.
    """

    def __init__(self, config: RecurrentConfig, batch_size: int, device: torch.device | str,
                 dtype: torch.dtype) -> None:
        shape = (config.n_layer, batch_size, config.n_hidden)
        self.h = torch.zeros(shape, device=device, dtype=dtype)
        self.c = torch.zeros(shape, device=device, dtype=dtype) if config.arch == "lstm" else None

    def prefill_view(self, slots: list[int], logits_at: torch.Tensor | None = None) -> StateView:
        return StateView(self, torch.tensor(slots, device=self.h.device), fresh=True,
                         logits_at=logits_at)

    def decode_view(self, lengths: list[int], device: torch.device | str | None = None) -> StateView:
        return StateView(self, torch.arange(len(lengths), device=self.h.device), fresh=False,
                         length=max(lengths, default=0))

    def copy_row(self, src: int, dst: int, length: int | None = None) -> None:
        self.h[:, dst] = self.h[:, src]
        if self.c is not None:
            self.c[:, dst] = self.c[:, src]

    def nbytes(self) -> int:
        tensors = [self.h] + ([self.c] if self.c is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


class StateView:
    """The cache a recurrent model sees in one forward pass: the state of some rows.

    It has the fields of lyre.model.contract.Cache (a recurrent model only reads `logits_at`)
    plus `read()` (the rows' state, None when they start from zeros) and `write(state)`.
    """

    positions = None
    attn_mask = None

    def __init__(self, storage: RecurrentState, rows: torch.Tensor, *, fresh: bool,
                 logits_at: torch.Tensor | None = None, length: int = 0) -> None:
        self.storage, self.rows, self.fresh = storage, rows, fresh
        self.logits_at = logits_at
        self.length = length

    def read(self) -> State | None:
        if self.fresh:
            return None
        s = self.storage
        h = s.h[:, self.rows]
        return h if s.c is None else (h, s.c[:, self.rows])

    def write(self, state: State) -> None:
        s = self.storage
        if s.c is None:
            s.h[:, self.rows] = state.to(s.h.dtype)
        else:
            h, c = state
            s.h[:, self.rows] = h.to(s.h.dtype)
            s.c[:, self.rows] = c.to(s.c.dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        raise TypeError("a recurrent state holds no keys and values")

    def advance(self, n: int) -> None:
        self.length += n
