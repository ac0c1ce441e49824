"""`lyre info` arithmetic: parameter counts, memory and FLOPs from the shape alone."""

import pytest

from lyre.model import GPT, GPTConfig
from lyre.train.info import count_parameters, model_cost


def test_gpt2_124m_parameter_count():
    total, _ = count_parameters(GPTConfig())
    assert total == 124_439_808


def test_gpt3_175b_shape():
    cost = model_cost(GPTConfig(n_layer=96, n_embd=12288, n_head=96, block_size=2048))
    assert 174e9 < cost.total_params < 176e9
    assert 690e9 < cost.weights_fp32_bytes < 710e9  # about 700 GB of fp32 weights


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(pos="rope", norm="rmsnorm", bias=False, tie_embeddings=False),
        dict(pos="sinusoidal", act="relu2", mlp_ratio=3.0),
    ],
)
def test_counts_match_built_models(kw):
    config = GPTConfig(n_layer=3, n_head=2, n_embd=48, block_size=32, vocab_size=101, **kw)
    total, embedding = count_parameters(config)
    model = GPT(config)
    assert total == model.num_parameters()
    assert total - embedding == model.num_parameters(non_embedding=True)


def test_flops_per_token_match_nanogpt_formula():
    # nanoGPT's estimate_mfu: 6 N + 12 L H Q T, N = all parameters but the position table.
    config = GPTConfig()
    cost = model_cost(config)
    n = cost.total_params - config.block_size * config.n_embd
    assert cost.flops_per_token == pytest.approx(6 * n + 12 * 12 * 12 * 64 * 1024)
