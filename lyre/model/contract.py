"""What every model family promises the rest of lyre, stated once.

The trainer, the evaluator, the generation engine and the server only ever call what is below;
GPT (lyre/model/gpt.py) and BigramLM (lyre/model/baselines.py) implement it, and so must any new
family. They are `typing.Protocol`s: a model does not inherit from them, it only has to have
these members (a test checks both families with isinstance). What a family may do beyond them
(an encoder-decoder, its own generation state, no context limit) is a `Capabilities`, with
defaults, read through `capabilities(model)`.

    logits, loss = model(idx, targets)       training: every position's logits, mean loss
    logits, _ = model(idx)                   scoring: every position's logits [B, T, V]
    logits, _ = model(idx, cache=cache)      generation: [B, 1, V], the position the cache asks for
    states = model.hidden(idx)               final hidden states [B, T, width], for heads/pooling

Why a cache object carries the ragged-batch details (per-row positions, an attention mask,
which position's logits to compute) instead of the model's signature: they are the engine's
business. The model a learner reads keeps `forward(idx, targets, cache)`, and the engine's cache
views (lyre/engine/cache.py) fill in the fields when rows of different lengths share a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Cache(Protocol):
    """What a model reads from and writes to during one cached forward pass."""

    length: int  # positions already cached; new tokens continue from it by default
    positions: torch.Tensor | None  # [B, T] each new token's position, or None (length, length+1..)
    attn_mask: torch.Tensor | None  # [B, 1, T, S] bool, True where a query may attend; None: causal
    logits_at: torch.Tensor | None  # [B] the position whose logits each row wants; None: the last

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys and values [B, H, T, D] of `layer`; return all the layer may attend to."""
        ...

    def advance(self, n: int) -> None:
        """Called once per forward pass, after every layer has stored its n new positions."""
        ...


class ModelConfig(Protocol):
    """The two numbers every consumer of a model needs from its config."""

    vocab_size: int  # token ids are 0 .. vocab_size - 1
    block_size: int  # the context length: at most this many positions


@runtime_checkable
class LanguageModel(Protocol):
    """A next-token model lyre can train, evaluate, and generate with."""

    config: ModelConfig

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: Cache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, mean cross-entropy with ignore_index=-100, or None without targets)."""
        ...

    def hidden(self, idx: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """The final hidden states [B, T, width] that the output layer scores."""
        ...

    def num_parameters(self, non_embedding: bool = False) -> int: ...

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Parameter groups for torch.optim (which parameters get weight decay)."""
        ...


@dataclass(frozen=True)
class Capabilities:
    """What the trainer, the engine and the CLI ask of a family beyond the methods above.

    A model class declares one as a class attribute (`decoder_only = False`); what it leaves
    out takes the default below, so a GPT-like decoder declares nothing. `capabilities(model)`
    is the one place that reads them: nothing else looks for these attributes.
    """

    uses_kv_cache: bool = True  # the engine allocates a KVCache and passes it to forward
    decoder_only: bool = True  # next-token prediction over one sequence; False: an
    #                            encoder-decoder, trained on pairs (lyre.train.tasks.seq2seq) and
    #                            decoded by lyre.zoo.translate instead of the engine
    unbounded_context: bool = False  # generation may run past block_size: its state does not
    #                                  grow with the text (a recurrent model)
    own_state: bool = False  # the model allocates its own generation state (not a KVCache):
    #                          model.new_cache(rows, max_length, device, dtype), a Cache


def capabilities(model: Any) -> Capabilities:
    """The capabilities of a model (or a model class), the defaults filled in."""
    declared = {f.name: bool(getattr(model, f.name, f.default)) for f in fields(Capabilities)
                if f.name != "own_state"}
    return Capabilities(**declared, own_state=callable(getattr(model, "new_cache", None)))
