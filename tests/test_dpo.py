"""DPO: the loss equals a hand computation on a toy batch, the LoRA reference is the same model with
its adapters off (no copy), and training on a learnable preference set raises the held-out
preference accuracy from chance."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from finetune_util import base_run, preference_records, write_json

from lyre.finetune.config import FinetuneConfig
from lyre.finetune.dpo import DPOTask, dpo_loss, pair_batch, preference_accuracy
from lyre.finetune.encode import Pair
from lyre.finetune.lora import LoRAConfig, adapters_disabled, apply_lora
from lyre.model import GPT, GPTConfig


def stub_prepared(pairs, beta):
    config = SimpleNamespace(extras={"finetune": FinetuneConfig(task="dpo", beta=beta)},
                             train=SimpleNamespace(seed=1))
    return SimpleNamespace(train=pairs, val=pairs, config=config, pad_id=0)


PAIRS = [Pair([1, 2, 3], [4, 5, 9], [6, 9]), Pair([7, 8], [10, 9], [11, 12, 13, 9])]


def hand_logprob(model, prompt, answer) -> float:
    """Sum of log p(answer token | everything before it), one position at a time."""
    ids = prompt + answer
    total = 0.0
    for t in range(len(prompt), len(ids)):
        logits = model(torch.tensor([ids[:t]]), torch.tensor([ids[1:t + 1]]))[0][0, -1]
        total += torch.log_softmax(logits.double(), -1)[ids[t]].item()
    return total


def test_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=20)).eval()
    apply_lora(model, LoRAConfig(rank=2, targets=["attn", "mlp"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.3)
    beta = 0.3
    task = DPOTask(stub_prepared(PAIRS, beta))
    task.attach(model)
    x, y = pair_batch(PAIRS, 0, "cpu")
    assert x.shape == (2, 2, 5)  # pairs stay in one row: [pairs, chosen/rejected, T]
    loss = task.loss(model, (x, y))
    expected = []
    for p in PAIRS:
        pc, pr = hand_logprob(model, p.prompt, p.chosen), hand_logprob(model, p.prompt, p.rejected)
        with adapters_disabled(model):
            rc, rr = hand_logprob(model, p.prompt, p.chosen), hand_logprob(model, p.prompt, p.rejected)
        z = beta * ((pc - rc) - (pr - rr))
        expected.append(-math.log(1 / (1 + math.exp(-z))))
    assert loss.item() == pytest.approx(sum(expected) / 2, abs=1e-5)
    assert task.reference_model is None  # LoRA: no second copy of the weights
    # Gradients reach the adapters only, and not through the reference pass.
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora" not in n)


def test_untrained_policy_scores_chance_and_margins_count_ties_half():
    zero = torch.zeros(4)
    loss, margin = dpo_loss(zero, zero, zero, zero, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and preference_accuracy(margin) == 0.5
    assert preference_accuracy(torch.tensor([1.0, -1.0, 0.0, 2.0])) == pytest.approx(0.625)


@pytest.mark.parametrize("lora", [True, False])
def test_evaluation_runs_the_reference_once_and_scores_the_same(lora):
    """An evaluation's reference log-probabilities are kept from the first one (the reference
    never trains): later evaluations run the policy only and report exactly what a task
    computing everything afresh reports (19.19)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=20))
    reference = None
    if lora:
        apply_lora(model, LoRAConfig(rank=2, targets=["attn", "mlp"]))
    else:
        import copy

        reference = copy.deepcopy(model).requires_grad_(False).eval()
    pairs = PAIRS * 5  # 10 pairs: two batches of 8 and 2
    task = DPOTask(stub_prepared(pairs, 0.3))
    task.attach(model, reference)
    runs = []
    real = task.reference
    task.reference = lambda: (runs.append(1), real())[1]
    first = task.evaluate(model, exact=False)
    assert len(runs) == 4  # train and val, two batches each
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    task.loss(model, pair_batch(pairs[:4], 0, "cpu")).backward()
    optimizer.step()
    runs.clear()
    second = task.evaluate(model, exact=False)
    assert runs == [] and second != first  # the policy moved; the reference was not run again
    fresh = DPOTask(stub_prepared(pairs, 0.3))
    fresh.attach(model, reference)
    assert fresh.evaluate(model, exact=False) == second


@pytest.mark.parametrize("lora", [True, False])
def test_training_raises_held_out_preference_accuracy(tmp_path_factory, tmp_path, lora):
    from lyre.finetune.command import finetune

    data = write_json(tmp_path / "pref.json", preference_records(80))
    extra = {"lora_rank": 4} if lora else {}
    lr = "lr=1e-2" if lora else "lr=1e-3"
    result = finetune(base_run(tmp_path_factory), data, tmp_path / "run", task="dpo", progress=False,
                      plot=False, quiet=True, overrides=[lr, "finetune.epochs=1", "finetune.responses=false"],
                      **extra)
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "val_loss" in line]
    assert evals[-1]["val_preference_accuracy"] >= 0.9 and evals[-1]["val_reward_margin"] > 0
    assert evals[-1]["val_loss"] < math.log(2)  # below the untrained policy's loss
    held_out = [r.messages[0]["content"] for r in result.prepared.splits.val]
    trained = {r.messages[0]["content"] + r.chosen for r in result.prepared.splits.train}
    assert held_out and not any(p + r.chosen in trained for p, r in
                                zip(held_out, result.prepared.splits.val, strict=True))
    # the run loads for chat like any other (DPO + LoRA: base + adapter)
    from lyre.generate.runs import load_run

    load_run(tmp_path / "run", "best", "cpu")


@pytest.mark.parametrize("lora", [True, False])
def test_exact_resume(tmp_path_factory, tmp_path, lora):
    """N + resume + N == 2N, also for a full fine-tune whose reference is found again."""
    from lyre.finetune.command import finetune
    from lyre.run import checkpoint as ckpt

    data = write_json(tmp_path / "pref.json", preference_records(40))
    base = base_run(tmp_path_factory)
    extra = {"lora_rank": 2} if lora else {}
    sets = ["lr=1e-3", "max_iters=6", "eval_interval=4", "finetune.responses=false"]
    for name, stop in (("straight", None), ("split", 3)):
        finetune(base, data, tmp_path / name, task="dpo", overrides=sets, progress=False, plot=False,
                 quiet=True, stop_at=stop, **extra)
    finetune(out=tmp_path / "split", resume=True, progress=False, plot=False, quiet=True)
    a = ckpt.load_model_state(tmp_path / "straight", "last")
    b = ckpt.load_model_state(tmp_path / "split", "last")
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(run):
        return [(r["step"], r.get("loss"), r.get("val_loss"), r.get("val_preference_accuracy"))
                for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
