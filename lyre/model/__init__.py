"""Models: every family lyre can build, registered by the name that `model.arch` gives.

    gpt      the GPT decoder (lyre/model/gpt.py)
    bigram   the first model of "Let's build GPT", the bar any model must beat (baselines.py)
    rnn, lstm, gru   recurrent language models (recurrent.py)
    seq2seq  the encoder-decoder Transformer of "Attention Is All You Need" (seq2seq.py)

The registry (lyre/model/registry.py) says how to add one.
"""

from __future__ import annotations

from lyre.model.baselines import BigramConfig, BigramLM
from lyre.model.contract import Capabilities, capabilities
from lyre.model.gpt import GPT, GPTConfig, KVCache, reference_attention
from lyre.model.recurrent import GRUConfig, LSTMConfig, RecurrentLM, RNNConfig
from lyre.model.registry import (
    ModelFamily,
    build_model,
    families,
    get_family,
    register_family,
    unregister_family,
)
from lyre.model.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

FAMILIES = (
    ModelFamily("gpt", GPTConfig, GPT, "decoder-only transformer (GPT-2 and modern options)"),
    ModelFamily("bigram", BigramConfig, BigramLM, "next token from the current one alone (baseline)"),
    ModelFamily("rnn", RNNConfig, RecurrentLM, "vanilla (Elman) recurrent network language model"),
    ModelFamily("lstm", LSTMConfig, RecurrentLM, "long short-term memory language model"),
    ModelFamily("gru", GRUConfig, RecurrentLM, "gated recurrent unit language model"),
    ModelFamily("seq2seq", Seq2SeqConfig, Seq2SeqTransformer,
                "encoder-decoder transformer (Attention Is All You Need), trained on pairs"),
)
for _family in FAMILIES:
    register_family(_family)

__all__ = [
    "GPT", "GPTConfig", "KVCache", "BigramLM", "BigramConfig", "build_model", "reference_attention",
    "RecurrentLM", "RNNConfig", "LSTMConfig", "GRUConfig", "Seq2SeqConfig", "Seq2SeqTransformer",
    "ModelFamily", "register_family", "unregister_family", "get_family", "families",
    "Capabilities", "capabilities",
]
