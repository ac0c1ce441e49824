"""Optimizers: AdamW (the default) and Muon (orthogonalized momentum for hidden matrices).

AdamW is PyTorch's own, fused into one kernel (CUDA and CPU), with weight decay on matrices only.

Muon (Keller Jordan, 2024; the optimizer of the modern nanoGPT speedruns) treats each hidden
weight matrix as a linear map rather than a bag of numbers. It keeps a Nesterov momentum of the
gradient, like SGD, but before applying it replaces the momentum matrix M = U S V^T by its
nearest semi-orthogonal matrix U V^T, computed with five Newton-Schulz iterations (a few
matmuls, in bf16 on CUDA). Every direction of the update then has the same size, so rare
directions learn as fast as common ones. Muon is only for 2-D matrices *inside* the network;
the embedding table, the output head (tied or not), norm gains and biases keep AdamW, as in the
speedruns. One `Muon` object holds both kinds of parameter groups, so checkpoints, learning-rate
schedules and `optimizer.param_groups` work exactly as with AdamW.

With FSDP the gradient of a matrix is split over the processes; Muon gathers it whole for the
Newton-Schulz step and keeps this process's shard of the result (every process computes the
same orthogonalization, which is simple and, for GPT-2-sized matrices, cheap).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim.adamw import adamw as adamw_update

from lyre.core.errors import LyreError

try:  # FSDP's sharded tensors (PyTorch >= 2.5 names them here)
    from torch.distributed.tensor import DTensor as _DTensor
except Exception:  # an old PyTorch, or a build without torch.distributed
    _DTensor = None

OPTIMIZERS = ("adamw", "muon")
# Coefficients of the quintic Newton-Schulz iteration tuned by Keller Jordan: they push every
# singular value into about [0.7, 1.2] in five steps, which is all Muon needs.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def check_optimizer_config(cfg) -> None:
    """Reject unknown optimizer names and impossible Muon settings, before anything runs."""
    if cfg.optimizer not in OPTIMIZERS:
        raise LyreError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}; got {cfg.optimizer!r}")
    if cfg.optimizer == "muon":
        if cfg.muon_lr <= 0:
            raise LyreError(f"train.muon_lr must be positive; got {cfg.muon_lr}")
        if not 0.0 <= cfg.muon_momentum < 1.0:
            raise LyreError(f"train.muon_momentum must be in [0, 1); got {cfg.muon_momentum}")


def split_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by role: hidden matrices, other matrices (embeddings, head), vectors.

    "hidden" are 2-D weights of the network's inner layers: everything 2-D that is neither an
    embedding table nor the output head `lm_head` (which is the embedding when tied).
    Parameters shared between modules are listed once, in `named_parameters()` order.
    """
    outer = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if head is not None and getattr(head, "weight", None) is not None:
        outer.add(id(head.weight))
    groups: dict[str, list[nn.Parameter]] = {"hidden": [], "matrices": [], "vectors": []}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 2 and id(p) not in outer:
            groups["hidden"].append(p)
        elif p.ndim >= 2:
            groups["matrices"].append(p)
        else:
            groups["vectors"].append(p)
    return groups


def build_optimizer(model: nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer named by cfg.optimizer, with cfg's learning rate, betas and weight decay."""
    check_optimizer_config(cfg)
    fused = device.type == "cuda"  # one kernel for all parameters
    if cfg.optimizer == "adamw":
        groups = model.optimizer_groups(cfg.weight_decay)
        # Fused on the CPU too (torch >= 2.4): one pass over all parameters instead of ~10 small
        # ops per parameter; about 3-5% faster training steps on a 2-core CPU (bench/train_throughput.py).
        fused_adamw = fused or device.type == "cpu"
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused_adamw)
    parts = split_parameters(model)
    groups = [
        {"params": parts["hidden"], "use_muon": True, "lr": cfg.muon_lr,
         "momentum": cfg.muon_momentum, "weight_decay": cfg.muon_weight_decay},
        {"params": parts["matrices"], "use_muon": False, "weight_decay": cfg.weight_decay},
        {"params": parts["vectors"], "use_muon": False, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return Muon(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float, cfg) -> None:
    """Apply the schedule: AdamW groups get `lr`; Muon groups get muon_lr scaled the same way."""
    scale = lr / cfg.lr if cfg.lr > 0 else 0.0
    for group in optimizer.param_groups:
        group["lr"] = cfg.muon_lr * scale if group.get("use_muon") else lr


# ----------------------------------------------------------------------------------------------
# Muon


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """The nearest semi-orthogonal matrix U V^T of g = U S V^T, approximately (singular values
    land in about [0.7, 1.2]). Runs in bf16 on CUDA (tensor cores), fp32 elsewhere."""
    a, b, c = NS_COEFFS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # singular values <= 1
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * (s @ s)) @ x
    if tall:
        x = x.mT
    return x.to(g.dtype)


def _orthogonalized(update: torch.Tensor, steps: int) -> torch.Tensor:
    """newton_schulz of a whole matrix, scaled so tall and wide matrices move alike.

    An FSDP shard (a DTensor) is gathered whole first, and this process keeps its own shard.
    """
    if _DTensor is not None and isinstance(update, _DTensor):
        from torch.distributed.tensor import distribute_tensor

        full = _orthogonalized(update.full_tensor(), steps)
        return distribute_tensor(full, update.device_mesh, update.placements, src_data_rank=None)
    rows, cols = update.shape
    return newton_schulz(update, steps) * math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Optimizer):
    """Muon for the groups with use_muon=True, AdamW (PyTorch's kernels) for the others.

    Muon groups: lr, momentum (Nesterov), weight_decay (decoupled), ns_steps. AdamW groups: lr,
    betas, eps, weight_decay, with the state names of torch.optim.AdamW (step, exp_avg,
    exp_avg_sq), so the AdamW half of a checkpoint reads the same as a plain AdamW one.
    """

    def __init__(
        self,
        params,
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        ns_steps: int = 5,
        fused: bool = False,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        ns_steps=ns_steps, use_muon=False, fused=fused)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"]:
                group["fused"] = False  # its step counter stays on the CPU (no fused kernel)
                for p in group["params"]:
                    if p.ndim != 2:
                        raise LyreError(f"Muon needs 2-D weight matrices; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict) -> None:
        lr, beta, decay, steps = group["lr"], group["momentum"], group["weight_decay"], group["ns_steps"]
        same_shape: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - beta)
            update = p.grad.lerp(buf, beta)  # Nesterov: look one momentum step ahead
            if decay:
                p.mul_(1 - lr * decay)
            if _DTensor is not None and isinstance(update, _DTensor):
                p.add_(_orthogonalized(update, steps), alpha=-lr)
            else:
                same_shape.setdefault((tuple(p.shape), p.dtype, p.device), []).append((p, update))
        # Matrices of one shape (the same layer in every block) go through Newton-Schulz as one
        # batch: the same arithmetic in a few large matmuls instead of many small ones.
        for (shape, _, _), pairs in same_shape.items():
            rows, cols = shape
            ortho = newton_schulz(torch.stack([u for _, u in pairs]), steps) * math.sqrt(max(1.0, rows / cols))
            for (p, _), o in zip(pairs, ortho, strict=True):
                p.add_(o, alpha=-lr)

    def _adamw_step(self, group: dict) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                # Same layout as torch.optim.AdamW: a float32 step, on the device when fused.
                device = p.device if group["fused"] else "cpu"
                state["step"] = torch.zeros((), dtype=torch.float32, device=device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        adamw_update(
            params, grads, exp_avgs, exp_avg_sqs, [], steps,
            fused=group["fused"] or None, amsgrad=False, beta1=beta1, beta2=beta2,
            lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
        )
