"""Direct preference optimisation (Rafailov et al., 2023): prefer the chosen answer to the rejected.

For a prompt x with a chosen answer y_w and a rejected one y_l, the policy (the model being
tuned) is compared with a frozen reference (the model before tuning):

    r(y) = beta * (log p_policy(y | x) - log p_reference(y | x))     the implicit reward
    loss = -log sigmoid(r(y_w) - r(y_l))

log p(y | x) is the sum of the log-probabilities of the answer's tokens (its <|endoftext|>
included). The loss pushes the chosen answer's likelihood up relative to the rejected one's,
and beta limits how far the policy moves from the reference. With LoRA the reference is the
same model with its adapters switched off (lyre.finetune.lora.adapters_disabled): no second copy. A full
fine-tune keeps a frozen copy. The reference is always evaluated without dropout.

Logged on the val pairs: the DPO loss, the reward margin r(y_w) - r(y_l), and the preference
accuracy, the fraction of pairs whose margin is positive (ties count half: the untrained policy
equals its reference and scores 0.5). The reference never trains and an evaluation scores the
same batches every time, so their reference log-probabilities are computed once, at the first
evaluation, and kept: each later evaluation runs the policy only (half the forward passes).
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.finetune.lora import adapters_disabled, has_lora
from lyre.finetune.sft import IGNORE, EarlyStop, pad_batch
from lyre.train.tasks.epochs import EpochOrder


def answer_logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(answer | prompt) per row [rows]: the sum over the positions whose target is kept."""
    logits, _ = model(x)  # every position's logits (the model contract without targets)
    token_logp = -F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=IGNORE,
                                  reduction="none")  # [rows, T], 0 where ignored
    return token_logp.sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             reference_chosen: torch.Tensor, reference_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, per-pair reward margin) from the four log-probabilities of each pair."""
    margin = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    return -F.logsigmoid(margin).mean(), margin.detach()


def preference_accuracy(margin: torch.Tensor) -> float:
    """Pairs whose implicit reward prefers the chosen answer; a tie counts half."""
    return ((margin > 0).float() + 0.5 * (margin == 0).float()).mean().item()


class _Item:
    """A prompt + answer as the padder wants it: ids and an answer mask."""

    __slots__ = ("ids", "mask")

    def __init__(self, prompt: list[int], answer: list[int]) -> None:
        self.ids = prompt + answer
        self.mask = [False] * len(prompt) + [True] * len(answer)


def pair_batch(pairs, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) [rows, 2, T]: each row a pair, chosen first. Pairs stay in one row so
    that splitting the global batch between processes (lyre.train.distributed) keeps them whole."""
    items = [_Item(p.prompt, a) for p in pairs for a in (p.chosen, p.rejected)]
    x, y = pad_batch(items, pad_id, False, device)
    return x.view(len(pairs), 2, -1), y.view(len(pairs), 2, -1)


class DPOTask:
    name = "dpo"
    best_metric = "val_loss"
    higher_is_better = False

    def __init__(self, prepared, autocast: AbstractContextManager | None = None,
                 eval_batch_size: int = 8) -> None:
        self.prepared = prepared
        self.train_pairs, self.val_pairs = prepared.train, prepared.val
        self.autocast = autocast or nullcontext()
        self.eval_batch_size = eval_batch_size
        ft = prepared.config.extras["finetune"]
        self.beta = ft.beta
        self.pad_id = prepared.pad_id
        self.order = EpochOrder(len(self.train_pairs), prepared.config.train.seed)
        self.early = EarlyStop(ft.early_stop)
        self.model: nn.Module | None = None
        self.reference_model: nn.Module | None = None
        self._kept: dict[tuple[str, int], torch.Tensor] = {}  # evaluation's reference log-probs

    def setup(self, config, run, *, resume: bool, dist: Any) -> None:
        self.config = config
        dist.main_first(lambda: self.prepared.write_run_files(run, resume), others=False)

    def build_model(self, config) -> nn.Module:
        self.model, self._kept = self.prepared.build_model(config), {}
        if not has_lora(self.model):  # full fine-tuning: the reference is a frozen copy
            self.reference_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        return self.model

    def attach(self, model: nn.Module, reference: nn.Module | None = None) -> None:
        """Use `model` (and a reference, unless it has LoRA) without build_model: tests, notebooks."""
        self.model, self.reference_model, self._kept = model, reference, {}

    @contextmanager
    def reference(self):
        """The frozen reference model, in eval mode (no dropout), for the duration of the block."""
        if self.reference_model is not None:
            self.reference_model.to(next(self.model.parameters()).device)
            yield self.reference_model
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with adapters_disabled(self.model):
                yield self.model
        finally:
            self.model.train(was_training)

    def _logprobs(self, forward: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  keep: tuple[str, int] | None = None):
        """(policy, reference) log-probabilities [pairs, 2] of a pair batch [pairs, 2, T].

        `keep` names a batch that is scored again later (an evaluation's): its reference
        log-probabilities are computed the first time and reused after, unchanged."""
        flat_x, flat_y = x.view(-1, x.size(-1)), y.view(-1, y.size(-1))
        ref = self._kept.get(keep) if keep is not None else None
        if ref is None:
            with torch.no_grad(), self.reference() as reference:
                ref = answer_logprobs(reference, flat_x, flat_y).view(-1, 2)
            if keep is not None:
                self._kept[keep] = ref
        return answer_logprobs(forward, flat_x, flat_y).view(-1, 2), ref

    def draw(self, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return pair_batch([self.train_pairs[i] for i in self.order.take(rows)], self.pad_id, device)

    def loss(self, forward: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        policy, ref = self._logprobs(forward, x, y)
        return dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], self.beta)[0]

    def score(self, model: nn.Module, pairs, split: str | None = None) -> dict[str, float]:
        """DPO loss, mean reward margin and preference accuracy over `pairs` (no gradients).

        `split` names `pairs` as a fixed list scored at every evaluation ("train", "val"): the
        reference's log-probabilities of its batches are then kept (see the module)."""
        device = next(model.parameters()).device
        losses, margins = [], []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.autocast:
                for start in range(0, len(pairs), self.eval_batch_size):
                    chunk = pairs[start:start + self.eval_batch_size]
                    keep = (split, start) if split is not None else None
                    policy, ref = self._logprobs(model, *pair_batch(chunk, self.pad_id, device), keep)
                    loss, margin = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], self.beta)
                    losses.append(loss.item() * len(chunk))
                    margins.append(margin.float())
        finally:
            model.train(was_training)
        margin = torch.cat(margins)
        return {"loss": sum(losses) / len(pairs), "reward_margin": margin.mean().item(),
                "preference_accuracy": preference_accuracy(margin)}

    def evaluate(self, model: nn.Module, exact: bool) -> dict[str, Any]:
        train = self.score(model, self.train_pairs[:max(16, len(self.val_pairs))], "train")
        epoch = self.order.epoch + self.order.position / max(self.order.n, 1)
        if not self.val_pairs:
            return {"train_loss": train["loss"], "val_loss": train["loss"], "epoch": epoch}
        val = self.score(model, self.val_pairs, "val")
        self.early.update(val["loss"])
        return {"train_loss": train["loss"], "val_loss": val["loss"],
                "val_reward_margin": val["reward_margin"],
                "val_preference_accuracy": val["preference_accuracy"],
                "train_preference_accuracy": train["preference_accuracy"], "epoch": epoch}

    def should_stop(self) -> str | None:
        return self.early.reason()

    def generators(self) -> dict[str, torch.Generator]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {**self.order.state_dict(), "early_stop": self.early.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)
        self.early.load_state_dict(state.get("early_stop", {}))


__all__ = ["DPOTask", "answer_logprobs", "dpo_loss", "preference_accuracy", "pair_batch"]
