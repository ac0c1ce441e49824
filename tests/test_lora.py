"""LoRA: adapters only are trainable, the adapted model starts equal to the base, merging is exact,
adapter-only checkpoints, a LoRA run loads base + adapter, and parity with the real `peft` package."""

from __future__ import annotations

import shutil

import pytest
import torch
from finetune_util import base_run, colour_records, write_json

from lyre.core.errors import LyreError
from lyre.finetune.lora import (
    LoRAConfig,
    LoRALinear,
    adapter_state_dict,
    adapters_disabled,
    apply_lora,
    checkpoint_adapters_only,
    count_parameters,
    load_adapter,
    merge_lora,
    resolve_targets,
    save_adapter,
)
from lyre.model import GPT, GPTConfig
from lyre.run import checkpoint as ckpt


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=50, dropout=0.0)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def logits_of(model, idx):
    return model(idx, idx)[0]  # targets: every position's logits on any model contract


def randomize_adapters(model, scale=0.2, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * scale)


IDX = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(5))


def test_only_adapters_train_and_the_start_equals_the_base():
    model = tiny_gpt()
    before = logits_of(model, IDX)
    names = apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=["attn", "mlp"]))
    assert names == [f"transformer.h.{i}.{m}" for i in range(2)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert torch.equal(logits_of(model, IDX), before)  # B = 0: exactly the base model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    per_layer = 4 * ((16 + 48) + (16 + 16) + (16 + 64) + (64 + 16))
    assert count_parameters(model)[0] == 2 * per_layer
    loss = model(IDX, IDX)[1]
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert model.transformer.h[0].attn.c_attn.lora_A.grad is not None


def test_targets_by_module_name_and_unknown_names():
    model = tiny_gpt()
    assert resolve_targets(model, ["c_attn"]) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert len(resolve_targets(model, ["c_proj"])) == 4  # attention's and the MLP's
    assert resolve_targets(model, ["h.1.mlp.c_fc"]) == ["transformer.h.1.mlp.c_fc"]
    with pytest.raises(LyreError, match="'q_proj' matches no Linear layer .* attn.c_attn"):
        resolve_targets(model, ["q_proj"])
    with pytest.raises(LyreError, match="matches no Linear"):
        resolve_targets(model, ["lm_head"])  # the output head is not a target
    with pytest.raises(LyreError, match="lora.rank"):
        apply_lora(model, LoRAConfig(rank=0))
    apply_lora(model, LoRAConfig(rank=2, targets=["c_attn"]))
    with pytest.raises(LyreError, match="already has LoRA"):
        apply_lora(model, LoRAConfig(rank=2))


@pytest.mark.parametrize("options", [{}, {"bias": False, "pos": "rope", "norm": "rmsnorm"}])
def test_merged_equals_unmerged_and_disabled_equals_base(options):
    model = tiny_gpt(**options)
    base = logits_of(model, IDX)
    apply_lora(model, LoRAConfig(rank=4, alpha=16, targets=["attn", "mlp"]))
    randomize_adapters(model)
    adapted = logits_of(model, IDX)
    assert (adapted - base).abs().max() > 1e-2  # the adapters do something
    with adapters_disabled(model):
        assert torch.equal(logits_of(model, IDX), base)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(tiny_gpt(**options).state_dict())
    assert torch.allclose(logits_of(model, IDX), adapted, atol=1e-5, rtol=0)


def test_adapter_file_round_trip_and_mismatch(tmp_path):
    model = tiny_gpt()
    apply_lora(model, LoRAConfig(rank=4, targets=["attn"]))
    randomize_adapters(model)
    size = save_adapter(model, tmp_path / "adapter.safetensors")
    assert size == (tmp_path / "adapter.safetensors").stat().st_size < 10_000
    other = tiny_gpt()
    apply_lora(other, LoRAConfig(rank=4, targets=["attn"]))
    load_adapter(other, tmp_path / "adapter.safetensors")
    assert torch.equal(logits_of(other, IDX), logits_of(model, IDX))
    wrong = tiny_gpt()
    apply_lora(wrong, LoRAConfig(rank=4, targets=["mlp"]))
    with pytest.raises(LyreError, match="does not fit this model's adapters"):
        load_adapter(wrong, tmp_path / "adapter.safetensors")
    bigger = tiny_gpt()
    apply_lora(bigger, LoRAConfig(rank=8, targets=["attn"]))
    with pytest.raises(LyreError, match="a different lora.rank"):
        load_adapter(bigger, tmp_path / "adapter.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(LyreError, match="not a readable safetensors"):
        load_adapter(other, tmp_path / "bad.safetensors")


def test_checkpoints_hold_the_adapters_only(tmp_path):
    model = tiny_gpt()
    apply_lora(model, LoRAConfig(rank=4))
    checkpoint_adapters_only(model)
    randomize_adapters(model)
    assert set(model.state_dict()) == set(adapter_state_dict(model))
    ckpt.save_checkpoint(tmp_path, "last", model=model, optimizer=None, state={"step": 1})
    fresh = tiny_gpt()  # the same base weights (same seed), new adapters
    apply_lora(fresh, LoRAConfig(rank=4))
    checkpoint_adapters_only(fresh)
    ckpt.load_checkpoint(tmp_path, "last", model=fresh)
    assert torch.equal(logits_of(fresh, IDX), logits_of(model, IDX))
    merge_lora(fresh)  # the hooks go with the adapters
    assert "lm_head.weight" in fresh.state_dict()


# ----------------------------------------------------------------------------------------------
# A LoRA run: base + adapter, the base's hash, PEFT export


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from lyre.finetune.command import finetune

    root = tmp_path_factory.mktemp("lora")
    base = root / "base"
    shutil.copytree(base_run(tmp_path_factory), base)
    data = write_json(root / "data.json", colour_records(40))
    # A high learning rate so that the adapters move far from zero in a few steps.
    finetune(base, data, root / "run", lora_rank=4, overrides=["max_iters=6", "lr=3e-2"],
             progress=False, plot=False, quiet=True)
    return root / "run"


def test_lora_run_stores_adapters_and_loads_base_plus_adapter(lora_run):
    from lyre.finetune.base import load_weights
    from lyre.generate.runs import load_run

    state = ckpt.load_model_state(lora_run, "last")
    assert state and all(k.endswith(("lora_A", "lora_B")) for k in state)
    assert (lora_run / "checkpoints" / "last" / "model.safetensors").stat().st_size < 50_000
    run = load_run(lora_run, "last", "cpu")
    assert not any(isinstance(m, LoRALinear) for m in run.model.modules())  # merged for inference
    config = run.config
    unmerged = GPT(config.model).eval()
    load_weights(unmerged, lora_run, "last", merge=False)
    ids = torch.randint(0, config.model.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(logits_of(run.model, ids), logits_of(unmerged, ids), atol=1e-5, rtol=0)
    base = load_run(config.extras["finetune"].base, "best", "cpu").model
    assert (logits_of(base, ids) - logits_of(unmerged, ids)).abs().max() > 1e-3


def test_a_changed_or_missing_base_is_detected(lora_run, tmp_path):
    from lyre.generate.runs import load_run

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    base = tmp_path / "base"
    shutil.copytree(lora_run.parent / "base", base)
    config = (run / "config.json").read_text().replace(str(lora_run.parent / "base"), str(base))
    (run / "config.json").write_text(config)
    load_run(run, "last", "cpu")  # the copy of the base is the same base
    name = "best"
    model = GPT(load_run(base, name, "cpu").config.model)
    ckpt.save_checkpoint(base, name, model=model, optimizer=None, state={"step": 99})  # retrained
    with pytest.raises(LyreError, match="changed since .* was trained on it"):
        load_run(run, "last", "cpu")
    shutil.rmtree(base)
    with pytest.raises(LyreError, match="is missing or not a lyre run"):
        load_run(run, "last", "cpu")


def test_peft_loads_the_exported_adapter_with_the_same_logits(lora_run, tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from lyre.cli import main
    from lyre.generate.runs import load_run

    assert main(["export-hf", str(lora_run), "--out", str(tmp_path / "merged"), "--checkpoint", "last",
                 "--peft-adapter", str(tmp_path / "adapter")]) == 0
    ours = load_run(lora_run, "last", "cpu").model
    ids = torch.randint(0, ours.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))
    expected = logits_of(ours, ids)
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "adapter" / "base")
    adapted = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = adapted(ids).logits
    assert (theirs - expected).abs().max() < 1e-4
    import json  # the adapter names its base portably: DIR/base, no path of this machine (19.18)

    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "base"
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert (merged(ids).logits - expected).abs().max() < 1e-4
    # a run without adapters has none to export, and nothing is written
    assert main(["export-hf", str(lora_run.parent / "base"), "--out", str(tmp_path / "x"),
                 "--peft-adapter", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
