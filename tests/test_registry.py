"""The model registry: a family added in one file (here, this test) trains, checkpoints,
resumes exactly and samples through the normal paths, with no edit anywhere else."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lyre.cli import main
from lyre.core.errors import LyreError
from lyre.generate.runs import load_run
from lyre.generate.simple import SamplingConfig, generate
from lyre.model import (
    Capabilities,
    ModelFamily,
    build_model,
    capabilities,
    families,
    get_family,
    register_family,
    unregister_family,
)
from lyre.run.config import load_config
from lyre.train.trainer import train

# ---- the whole new family: a config, a model, one registration ------------------------------


@dataclass
class PairConfig:
    """Next token from the current one through a small MLP: a bigram with a hidden layer."""

    arch: str = "pair-mlp"
    vocab_size: int = 65
    block_size: int = 16
    n_embd: int = 16
    dropout: float = 0.0


class PairMLP(nn.Module):
    uses_kv_cache = False  # it looks at one token: nothing to cache

    def __init__(self, config: PairConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, config.n_embd), nn.ReLU(), nn.Dropout(config.dropout))
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    def hidden(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        return self.mlp(self.embed(idx))

    def forward(self, idx, targets=None, cache=None):
        x = self.hidden(idx, cache)
        if cache is not None:
            cache.advance(idx.size(1))
            if targets is None:  # generation: only the positions the cache asks for
                at = cache.logits_at
                x = x[:, -1:] if at is None else x[torch.arange(x.size(0)), at].unsqueeze(1)
        logits = self.head(x)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)

    def num_parameters(self, non_embedding: bool = False) -> int:
        return sum(p.numel() for p in self.parameters())

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        matrices = [p for p in self.parameters() if p.dim() >= 2]
        others = [p for p in self.parameters() if p.dim() < 2]
        return [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]


FAMILY = ModelFamily("pair-mlp", PairConfig, PairMLP, "test family")


@pytest.fixture
def pair_family():
    register_family(FAMILY)
    yield FAMILY
    unregister_family(FAMILY.name)


# ---- the tests -------------------------------------------------------------------------------


def test_built_in_families_and_their_capabilities():
    known = families()
    assert {"gpt", "bigram"} <= set(known)
    assert known["gpt"].capabilities.uses_kv_cache and not known["bigram"].capabilities.uses_kv_cache
    assert known["gpt"].capabilities.decoder_only and not known["seq2seq"].capabilities.decoder_only
    assert known["lstm"].capabilities.own_state and known["lstm"].capabilities.unbounded_context
    assert not known["gpt"].capabilities.own_state and not known["gpt"].capabilities.unbounded_context


def test_capabilities_default_and_are_read_in_one_place():
    """A model class that declares nothing is a plain decoder with a KV cache, and no module but
    the contract looks for the capability attributes itself."""
    import re
    from pathlib import Path

    import lyre

    class Plain(nn.Module):
        pass

    assert capabilities(Plain) == capabilities(Plain()) == Capabilities()
    assert capabilities(PairMLP) == Capabilities(uses_kv_cache=False)
    names = "|".join(f.name for f in fields(Capabilities)) + "|new_cache"
    pattern = re.compile(rf"(getattr|hasattr)\([^)]*[\"']({names})[\"']")
    root = Path(lyre.__file__).parent
    readers = [str(p.relative_to(root)) for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert readers == ["model/contract.py"]


def test_unknown_arch_lists_the_known_ones(tiny_toml):
    with pytest.raises(LyreError, match=r"unknown model.arch 'gtp' \(did you mean 'gpt'\?\); known: .*bigram"):
        load_config(tiny_toml, ["arch=gtp"])


def test_a_family_registered_in_one_file_trains_resumes_and_samples(tmp_path, tiny_toml, pair_family):
    # --set arch=... keeps the preset's shared fields (block_size, n_embd, dropout) and drops
    # the GPT-only ones.
    config = load_config(tiny_toml, ["arch=pair-mlp", "train.max_iters=12", "train.eval_interval=4",
                                     "dropout=0.1"])
    assert isinstance(config.model, PairConfig) and config.model.block_size == 16
    straight = train(config, tmp_path / "straight", progress=False, plot=False)
    config = load_config(tiny_toml, ["arch=pair-mlp", "train.max_iters=12", "train.eval_interval=4",
                                     "dropout=0.1"])
    train(config, tmp_path / "split", stop_at=6, progress=False, plot=False)
    resumed = train(None, tmp_path / "split", resume=True, progress=False, plot=False)
    assert resumed.step == straight.step == 12
    assert resumed.val_loss == straight.val_loss  # exact resume, dropout included

    run = load_run(tmp_path / "split")
    assert isinstance(run.model, PairMLP) and run.config.model.arch == "pair-mlp"
    text = generate(run.model, run.tokenizer, "Sing", SamplingConfig(max_new_tokens=20, temperature=0))
    assert isinstance(text, str) and text
    # The normal CLI too, in this process (where the family is registered).
    assert main(["sample", str(tmp_path / "split"), "--prompt", "Sing", "--max-new-tokens", "10",
                 "--temperature", "0"]) == 0
    assert main(["eval", str(tmp_path / "split")]) == 0


def test_registering_checks_the_config_contract(pair_family):
    @dataclass
    class NoArch:
        vocab_size: int = 1
        block_size: int = 1

    with pytest.raises(TypeError, match="arch"):
        register_family(ModelFamily("bad", NoArch, PairMLP))
    with pytest.raises(ValueError, match="already registered"):
        register_family(ModelFamily("pair-mlp", PairConfig, nn.Linear))
    assert get_family("gpt").config_class.__name__ == "GPTConfig"
    default = load_config(None).model  # the default model, shrunk: building 124M weights takes seconds
    tiny = replace(default, n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=32)
    assert type(build_model(tiny)).__name__ == "GPT"
