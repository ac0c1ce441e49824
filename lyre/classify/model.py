"""A classification head on a language model: hidden states -> one vector per text -> classes.

    ids [B, T] --base.hidden--> states [B, T, C] --pool--> [B, C] --head--> logits [B, classes]

The base is any lyre language model (a GPT pretrained here or imported from GPT-2); the head is
one Linear layer without bias, as Hugging Face's GPT2ForSequenceClassification (its `score`),
so a GPT-2-family classifier exports exactly (lyre.classify.export). Texts of a batch are
right-padded: in a causal model a token never sees the ones after it, so padding changes no
hidden state of a real token and needs no attention mask.

Pooling chooses the vector the head reads:
    last_nonpad  the last real token of each text: the only position that has seen all of it
                 (the default; the book's bonus table: 98.33% vs 95.67%)
    last         the last position of the padded batch, the book's main recipe; batches are
                 padded to one fixed length (classify.pad_to) so that a text's answer does not
                 depend on the texts it is batched with
    mean         the mean over the real tokens
    last+mean    the last real token and the mean over the real tokens, side by side (2 x C)

What trains (classify.trainable): the head only; the last N blocks and the final norm (the
book's choice, N=1); everything; or LoRA adapters in the base (lyre.finetune.lora) and the head.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.core.errors import LyreError


def hidden_states(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The base model's final hidden states [B, T, C], after the last norm: the model contract's
    `hidden` (lyre/model/contract.py), what its LM head would score."""
    return model.hidden(idx)


def pad_batch(seqs: list[list[int]], pad_id: int, pad_to: int = 0,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to the longest (or to `pad_to`): (ids [B, T], lengths [B])."""
    width = max(pad_to, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return ids.to(device), lengths.to(device)


def pool(states: torch.Tensor, lengths: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per row of states [B, T, C], as `how` says (see the module docstring)."""
    if how == "last":
        return states[:, -1]
    if how == "last+mean":
        return torch.cat([pool(states, lengths, "last_nonpad"), pool(states, lengths, "mean")], dim=-1)
    if how == "mean":
        real = torch.arange(states.size(1), device=states.device) < lengths.unsqueeze(1)  # [B, T]
        summed = (states * real.unsqueeze(-1).to(states.dtype)).sum(dim=1)
        return summed / lengths.clamp(min=1).unsqueeze(1).to(states.dtype)
    rows = torch.arange(states.size(0), device=states.device)
    return states[rows, lengths - 1]


class SequenceClassifier(nn.Module):
    """A base language model plus a linear head over its pooled final hidden states."""

    uses_kv_cache = False

    def __init__(self, base: nn.Module, num_classes: int, pooling: str = "last_nonpad") -> None:
        super().__init__()
        width = getattr(base.config, "n_embd", None)
        if width is None or not hasattr(base, "hidden"):
            raise LyreError(f"cannot put a classification head on model.arch={base.config.arch!r}: "
                            "it has no hidden states (use a transformer such as arch=gpt)")
        self.base = base
        self.config = base.config  # block_size, for callers that fit texts to the context
        self.pooling = pooling
        self.head = nn.Linear(width * (2 if pooling == "last+mean" else 1), num_classes, bias=False)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits [B, classes], and the mean cross-entropy when `targets` [B] are given.

        lengths [B]: the real tokens of each right-padded row (default: all T).
        """
        if lengths is None:
            lengths = torch.full((idx.size(0),), idx.size(1), dtype=torch.long, device=idx.device)
        logits = self.head(pool(hidden_states(self.base, idx), lengths, self.pooling))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.float(), targets)

    def num_parameters(self, non_embedding: bool = False) -> int:
        return self.base.num_parameters(non_embedding) + self.head.weight.numel()

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on trainable matrices only (the head's included), as the base does."""
        params = list({id(p): p for p in self.parameters() if p.requires_grad}.values())
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]


def set_trainable(model: SequenceClassifier, mode: str, blocks: int = 1,
                  lora: object | None = None) -> tuple[int, int]:
    """Freeze what `mode` does not train; returns (trainable, total) parameter counts.

    head    the head alone: the base is a fixed feature extractor
    blocks  the head, the last `blocks` transformer blocks and the final norm
    all     everything (an untied, unused LM head excepted)
    lora    the head and LoRA adapters put into the base (`lora`: a lyre.finetune.lora.LoRAConfig)
    """
    base = model.base
    base.requires_grad_(mode == "all")
    if mode == "blocks":
        layers = base.transformer.h
        if blocks > len(layers):
            raise LyreError(f"classify.blocks={blocks} but the model has {len(layers)} blocks; "
                            "use classify.trainable=all to train every block")
        for block in layers[len(layers) - blocks:]:
            block.requires_grad_(True)
        base.transformer.ln_f.requires_grad_(True)
    elif mode == "all":
        head = getattr(base, "lm_head", None)
        if head is not None and head.weight is not base.transformer.wte.weight:
            head.requires_grad_(False)  # never used by a classifier; DDP rejects unused params
    elif mode == "lora":
        from lyre.finetune.lora import LoRAConfig, apply_lora

        apply_lora(base, lora if lora is not None else LoRAConfig())
    model.head.requires_grad_(True)
    seen = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad), total


@torch.no_grad()
def score(model: SequenceClassifier, seqs: list[list[int]], pad_id: int, pad_to: int = 0,
          batch_size: int = 32) -> torch.Tensor:
    """Class logits [N, classes] of token lists, in their order, in eval mode (no dropout).

    Texts of similar length share a batch (less padding to compute); with right padding and
    a causal model the grouping changes no result.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), model.num_classes)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, lengths = pad_batch([seqs[i] for i in rows], pad_id, pad_to, device)
            out[rows] = model(ids, lengths=lengths)[0].float().cpu()
    finally:
        model.train(was_training)
    return out
