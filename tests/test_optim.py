"""Optimizers: Muon's orthogonalized update, its split of the parameters, its AdamW half equal to
PyTorch's AdamW, and Muon runs resuming exactly like AdamW ones."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from lyre.core.errors import LyreError
from lyre.model import GPT, GPTConfig
from lyre.run.config import TrainConfig
from lyre.train.optim import (
    Muon,
    build_optimizer,
    check_optimizer_config,
    newton_schulz,
    set_learning_rate,
    split_parameters,
)
from lyre.train.trainer import train

CPU = torch.device("cpu")


def _tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11, **kw))


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (32, 32)])
def test_newton_schulz_makes_the_singular_values_about_one(shape):
    torch.manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))
    g = u @ torch.diag(torch.logspace(-1, 1, k)) @ v.T  # singular values from 0.1 to 10
    s = torch.linalg.svdvals(newton_schulz(g))
    assert s.min() > 0.5 and s.max() < 1.3  # Keller Jordan's coefficients: about [0.7, 1.2]
    assert newton_schulz(g).shape == g.shape


def test_split_parameters_keeps_embeddings_head_and_gains_out_of_muon():
    model = _tiny_gpt(tie_embeddings=False)
    names = {id(p): n for n, p in model.named_parameters()}
    parts = {k: sorted(names[id(p)] for p in v) for k, v in split_parameters(model).items()}
    assert all(n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) for n in parts["hidden"])
    assert len(parts["hidden"]) == 2 * 4
    assert parts["matrices"] == ["lm_head.weight", "transformer.wpe.weight", "transformer.wte.weight"]
    assert all(not n.endswith(("c_attn.weight", "c_fc.weight")) for n in parts["vectors"])
    tied = split_parameters(_tiny_gpt())  # the tied head is the embedding: listed once
    assert sum(p.numel() for ps in tied.values() for p in ps) == _tiny_gpt().num_parameters()


def test_the_adamw_half_is_pytorchs_adamw():
    """Without hidden matrices Muon is exactly torch.optim.AdamW (same state names too)."""
    model = nn.Sequential(nn.Embedding(11, 8), nn.LayerNorm(8))
    twin = nn.Sequential(nn.Embedding(11, 8), nn.LayerNorm(8))
    twin.load_state_dict(model.state_dict())
    groups = lambda m: [  # noqa: E731
        {"params": [m[0].weight], "weight_decay": 0.1}, {"params": list(m[1].parameters()), "weight_decay": 0.0}
    ]
    ours = Muon(groups(model), lr=1e-2, betas=(0.9, 0.95))
    reference = torch.optim.AdamW(groups(twin), lr=1e-2, betas=(0.9, 0.95))
    x = torch.randint(0, 11, (4, 5))
    for _ in range(5):
        for m, opt in ((model, ours), (twin, reference)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert set(ours.state[model[0].weight]) == set(reference.state[twin[0].weight])


def test_one_muon_step_moves_a_matrix_by_its_orthogonalized_gradient():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 24))
    start = w.detach().clone()
    opt = Muon([{"params": [w], "use_muon": True, "lr": 0.05, "momentum": 0.95}])
    w.grad = torch.randn(8, 24)
    opt.step()
    # First step: the Nesterov update is a multiple of the gradient, and Newton-Schulz ignores
    # the scale; a wide matrix gets no extra factor (tall ones get sqrt(rows / cols)).
    torch.testing.assert_close(w.detach(), start - 0.05 * newton_schulz(w.grad), rtol=0, atol=1e-6)
    tall = nn.Parameter(torch.zeros(24, 8))
    Muon([{"params": [tall], "use_muon": True, "lr": 1.0}]).step()  # no grad: no change
    assert torch.count_nonzero(tall) == 0


def test_learning_rate_schedule_scales_muon_groups_alike():
    cfg = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02)
    opt = build_optimizer(_tiny_gpt(), cfg, CPU)
    assert [g["use_muon"] for g in opt.param_groups] == [True, False, False]
    set_learning_rate(opt, 5e-4, cfg)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.01), 5e-4, 5e-4]
    adamw = build_optimizer(_tiny_gpt(), TrainConfig(), CPU)
    assert type(adamw) is torch.optim.AdamW


@pytest.mark.parametrize("override,message", [
    ({"optimizer": "sgd"}, "train.optimizer must be one of adamw, muon"),
    ({"optimizer": "muon", "muon_lr": 0.0}, "muon_lr must be positive"),
    ({"optimizer": "muon", "muon_momentum": 1.0}, "muon_momentum must be in"),
])
def test_bad_muon_settings(override, message):
    with pytest.raises(LyreError, match=message):
        check_optimizer_config(TrainConfig(**override))


def test_muon_run_resumes_exactly_and_learns(tmp_path, tiny_config):
    settings = ("train.optimizer=muon", "train.max_iters=8", "train.eval_interval=4")
    straight = train(tiny_config(*settings), tmp_path / "straight", progress=False, plot=False)
    train(tiny_config(*settings), tmp_path / "split", stop_at=4, progress=False, plot=False)
    resumed = train(None, tmp_path / "split", resume=True, progress=False, plot=False)
    lines = lambda run: [  # noqa: E731
        {k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "ms_per_step")}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert lines(tmp_path / "split") == lines(tmp_path / "straight")
    assert resumed.val_loss == straight.val_loss
    losses = [r["loss"] for r in straight.history if "loss" in r]
    assert losses[-1] < losses[0] < math.log(80)  # learns (from about ln(vocab))
