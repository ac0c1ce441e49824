"""The GPT model: shapes, attention implementations, positions, caches, tied weights."""

import pytest
import torch

from lyre.core.errors import LyreError
from lyre.model import GPT, BigramConfig, BigramLM, GPTConfig, KVCache, reference_attention
from lyre.model.contract import Cache, LanguageModel, capabilities


def tiny(**kw) -> GPTConfig:
    base = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=61, dropout=0.0)
    base.update(kw)
    return GPTConfig(**base)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "none"])
@pytest.mark.parametrize("norm,act", [("layernorm", "gelu"), ("rmsnorm", "relu2"), ("rmsnorm", "relu")])
def test_forward_shapes_and_loss(pos, norm, act):
    torch.manual_seed(0)
    model = GPT(tiny(pos=pos, norm=norm, act=act))
    x = torch.randint(0, 61, (3, 16))
    y = torch.randint(0, 61, (3, 16))
    logits, loss = model(x, y)
    assert logits.shape == (3, 16, 61)
    # At init the model is close to uniform over the vocabulary.
    assert abs(loss.item() - torch.log(torch.tensor(61.0)).item()) < 0.5
    every, none = model(x)  # no targets, no cache: every position (scoring)
    assert every.shape == (3, 16, 61) and none is None
    torch.testing.assert_close(every, logits)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_sdpa_matches_reference_attention_outputs_and_gradients(pos):
    torch.manual_seed(0)
    fast = GPT(tiny(pos=pos))
    slow = GPT(tiny(pos=pos, attn_impl="reference"))
    slow.load_state_dict(fast.state_dict())
    x = torch.randint(0, 61, (2, 16))
    logits_fast, loss_fast = fast(x, x)
    logits_slow, loss_slow = slow(x, x)
    torch.testing.assert_close(logits_fast, logits_slow, atol=1e-5, rtol=1e-5)
    loss_fast.backward()
    loss_slow.backward()
    for (name, p_fast), p_slow in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p_fast.grad, p_slow.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_reference_attention_is_causal():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    out = reference_attention(q, k, v)
    v2 = v.clone()
    v2[:, :, 3:] += 100.0  # changing the future must not change the past
    out2 = reference_attention(q, k, v2)
    torch.testing.assert_close(out[:, :, :3], out2[:, :, :3])
    # The first position can only attend to itself.
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0])


def test_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(tiny(pos="rope", norm="rmsnorm"))
    x = torch.randint(0, 61, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 61
    a, _ = model(x)
    b, _ = model(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_kv_cache_matches_full_forward(pos):
    torch.manual_seed(0)
    model = GPT(tiny(pos=pos)).eval()
    x = torch.randint(0, 61, (2, 12))
    full, _ = model(x)
    cache = KVCache(model.config, batch_size=2)
    prefill, _ = model(x[:, :8], cache=cache)  # with a cache: the last position's logits only
    assert prefill.shape == (2, 1, 61)
    torch.testing.assert_close(prefill[:, 0], full[:, 7], atol=1e-5, rtol=1e-5)
    for t in range(8, 12):
        step, _ = model(x[:, t : t + 1], cache=cache)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
    assert cache.length == 12


def test_hidden_states_are_what_the_head_scores():
    torch.manual_seed(0)
    model = GPT(tiny(pos="rope", norm="rmsnorm")).eval()
    x = torch.randint(0, 61, (2, 12))
    states = model.hidden(x)
    assert states.shape == (2, 12, 32)
    torch.testing.assert_close(model.lm_head(states), model(x)[0])
    cache = KVCache(model.config, batch_size=2)  # cached hidden states continue the same way
    torch.testing.assert_close(
        torch.cat([model.hidden(x[:, :5], cache), model.hidden(x[:, 5:], cache)], dim=1),
        states, atol=1e-5, rtol=1e-5,
    )


@pytest.mark.parametrize("family", ["gpt", "bigram"])
def test_every_family_follows_the_model_contract(family):
    """lyre.model.contract states the contract once; both families have all of it, and the
    logits a cache asks for are those of the full forward."""
    torch.manual_seed(0)
    model = (GPT if family == "gpt" else BigramLM)(tiny()).eval()
    assert isinstance(model, LanguageModel)
    assert isinstance(KVCache(tiny(), batch_size=1), Cache)
    assert capabilities(model).uses_kv_cache == (family == "gpt")
    x = torch.randint(0, 61, (3, 10))
    full, loss = model(x)
    assert full.shape == (3, 10, 61) and loss is None
    assert model.hidden(x).shape[:2] == (3, 10)
    cache = KVCache(model.config, batch_size=3)
    last, _ = model(x, cache=cache)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)
    assert cache.length == 10
    at = torch.tensor([9, 0, 4])  # one position per row, as a right-padded prefill asks
    picked, _ = model(x, cache=_with_logits_at(KVCache(model.config, batch_size=3), at))
    torch.testing.assert_close(picked[:, 0], full[torch.arange(3), at], atol=1e-5, rtol=1e-5)
    assert model.num_parameters() > 0 and model.optimizer_groups(0.1)


def _with_logits_at(cache: KVCache, at: torch.Tensor) -> KVCache:
    cache.logits_at = at
    return cache


def test_tied_embeddings_share_one_matrix():
    model = GPT(tiny())
    assert model.lm_head.weight is model.transformer.wte.weight
    untied = GPT(tiny(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_parameters() == model.num_parameters() + 61 * 32


def test_ignore_index_masks_the_loss():
    torch.manual_seed(0)
    model = GPT(tiny())
    x = torch.randint(0, 61, (2, 16))
    y = x.clone()
    y[:, :8] = -100
    logits, loss = model(x, y)
    expected = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 61), x[:, 8:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_too_long_sequence_is_a_clear_error():
    model = GPT(tiny())
    with pytest.raises(LyreError, match="longer than the context"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(n_embd=30, n_head=4), "divisible"),
        (dict(pos="alibi"), "model.pos"),
        (dict(norm="batchnorm"), "model.norm"),
        (dict(n_layer=0), "positive"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_invalid_configs_are_rejected(kw, msg):
    with pytest.raises(LyreError, match=msg):
        tiny(**kw)


def test_weight_decay_only_on_matrices():
    model = GPT(tiny())
    decay, no_decay = model.optimizer_groups(0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_bigram_baseline_follows_the_same_contract():
    model = BigramLM(BigramConfig(vocab_size=61, block_size=16))
    x = torch.randint(0, 61, (2, 16))
    logits, loss = model(x, x)
    assert logits.shape == (2, 16, 61) and loss.ndim == 0
    loss.backward()
    assert model.table.weight.grad is not None
