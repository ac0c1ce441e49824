"""Architectures: a Hugging Face config.json <-> lyre's GPTConfig, in both directions.

Import maps three model types onto GPTConfig (gpt2, arcee, starcoder2). Export picks the one
that computes *exactly* what a lyre model computes (export_target) and writes its config.json
(hf_config). Any option without an exact equivalent is refused, naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lyre.core.errors import LyreError
from lyre.model.gpt import GPTConfig

# Activations: Hugging Face name -> lyre name. Every tanh-approximate GELU is lyre's gelu; the
# exact (erf) "gelu" is a different function and is refused, never approximated.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
ACT_FROM_HF = {**{name: "gelu" for name in TANH_GELUS}, "relu": "relu", "relu2": "relu2"}

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, used by lyre; GPT-2's layer_norm_epsilon
RMS_NORM_EPS = 1e-6  # lyre's RMSNorm

# GPTConfig fields the converters understand. A field added later (say, grouped-query
# attention) makes export refuse unless it keeps its default: better than a silent mismatch.
KNOWN_FIELDS = {
    "arch", "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias", "pos",
    "norm", "act", "mlp_ratio", "tie_embeddings", "rope_base", "attn_impl",
}


# ----------------------------------------------------------------------------------------------
# Import: config.json -> GPTConfig


def _require(hf: dict[str, Any], key: str, model_type: str) -> Any:
    if hf.get(key) is None:
        raise LyreError(f"config.json of this {model_type} model has no '{key}'")
    return hf[key]


def _act_from_hf(name: str | None, model_type: str) -> str:
    if name in ACT_FROM_HF:
        return ACT_FROM_HF[name]
    if name == "gelu":
        raise LyreError(
            f"{model_type} activation 'gelu' is the exact (erf) GELU; lyre's is the tanh "
            "approximation (gelu_new), so the import would not be exact"
        )
    raise LyreError(
        f"{model_type} activation {name!r} has no lyre equivalent; lyre has "
        f"{', '.join(sorted(ACT_FROM_HF))}"
    )


def _mlp_ratio(hidden: int, n_embd: int) -> float:
    ratio = hidden / n_embd
    if int(ratio * n_embd) != hidden:
        raise LyreError(f"MLP width {hidden} is not representable as mlp_ratio * n_embd ({n_embd})")
    return ratio


def _check_eps(value: float, expected: float, key: str, model_type: str) -> None:
    if abs(float(value) - expected) > expected * 1e-6:
        raise LyreError(f"{model_type} {key}={value} differs from lyre's fixed {expected}; not exact")


def _gpt2_config(hf: dict[str, Any]) -> GPTConfig:
    for key, unsupported in (
        ("scale_attn_by_inverse_layer_idx", True),
        ("add_cross_attention", True),
        ("scale_attn_weights", False),
    ):
        if hf.get(key, not unsupported) == unsupported:
            raise LyreError(f"gpt2 option {key}={str(unsupported).lower()} is not supported by lyre")
    _check_eps(hf.get("layer_norm_epsilon", LAYER_NORM_EPS), LAYER_NORM_EPS, "layer_norm_epsilon", "gpt2")
    n_embd = _require(hf, "n_embd", "gpt2")
    return GPTConfig(
        n_layer=_require(hf, "n_layer", "gpt2"),
        n_head=_require(hf, "n_head", "gpt2"),
        n_embd=n_embd,
        block_size=_require(hf, "n_positions", "gpt2"),
        vocab_size=_require(hf, "vocab_size", "gpt2"),
        dropout=0.0,  # a training choice: `lyre train` sets its own when fine-tuning
        bias=True,
        pos="learned",
        norm="layernorm",
        act=_act_from_hf(hf.get("activation_function", "gelu_new"), "gpt2"),
        mlp_ratio=_mlp_ratio(hf.get("n_inner") or 4 * n_embd, n_embd),
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _rope_theta(hf: dict[str, Any], model_type: str) -> float:
    """Plain RoPE only; transformers 5 nests it in rope_parameters, 4.x kept rope_theta on top."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise LyreError(f"{model_type} rope_type {rope_type!r} is not plain RoPE; lyre has no equivalent")
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise LyreError(f"{model_type} partial_rotary_factor != 1 has no lyre equivalent")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _llama_layout_config(hf: dict[str, Any], model_type: str, norm: str, bias: bool) -> GPTConfig:
    """The shared part of the rotary decoders (Arcee, Starcoder2): q/k/v/o projections."""
    n_embd = _require(hf, "hidden_size", model_type)
    n_head = _require(hf, "num_attention_heads", model_type)
    if hf.get("num_key_value_heads") not in (None, n_head):
        raise LyreError(
            f"{model_type} grouped-query attention (num_key_value_heads != num_attention_heads) "
            "has no lyre equivalent"
        )
    if hf.get("head_dim") not in (None, n_embd // n_head):
        raise LyreError(f"{model_type} head_dim != hidden_size / num_attention_heads has no lyre equivalent")
    if hf.get("sliding_window") is not None:
        raise LyreError(f"{model_type} sliding-window attention has no lyre equivalent")
    return GPTConfig(
        n_layer=_require(hf, "num_hidden_layers", model_type),
        n_head=n_head,
        n_embd=n_embd,
        block_size=_require(hf, "max_position_embeddings", model_type),
        vocab_size=_require(hf, "vocab_size", model_type),
        dropout=0.0,
        bias=bias,
        pos="rope",
        norm=norm,
        act=_act_from_hf(hf.get("hidden_act"), model_type),
        mlp_ratio=_mlp_ratio(_require(hf, "intermediate_size", model_type), n_embd),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        rope_base=_rope_theta(hf, model_type),
    )


def _arcee_config(hf: dict[str, Any]) -> GPTConfig:
    attn_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    if attn_bias != mlp_bias:
        raise LyreError("arcee attention_bias != mlp_bias; lyre has one bias switch for both")
    _check_eps(hf.get("rms_norm_eps", 1e-5), RMS_NORM_EPS, "rms_norm_eps", "arcee")
    return _llama_layout_config(hf, "arcee", "rmsnorm", bool(attn_bias))


def _starcoder2_config(hf: dict[str, Any]) -> GPTConfig:
    _check_eps(hf.get("norm_epsilon", LAYER_NORM_EPS), LAYER_NORM_EPS, "norm_epsilon", "starcoder2")
    return _llama_layout_config(hf, "starcoder2", "layernorm", bool(hf.get("use_bias", True)))


CONFIG_FROM_HF: dict[str, Callable[[dict[str, Any]], GPTConfig]] = {
    "gpt2": _gpt2_config,
    "arcee": _arcee_config,
    "starcoder2": _starcoder2_config,
}


def hf_to_lyre_config(hf: dict[str, Any]) -> GPTConfig:
    model_type = hf.get("model_type")
    if model_type not in CONFIG_FROM_HF:
        hint = " (its MLP is gated, lyre's is not)" if model_type in ("llama", "mistral", "qwen2") else ""
        raise LyreError(
            f"unsupported model_type {model_type!r}{hint}; lyre imports {', '.join(CONFIG_FROM_HF)}"
        )
    try:
        return CONFIG_FROM_HF[model_type](hf)
    except TypeError as e:  # e.g. a string where a number belongs
        raise LyreError(f"config.json of this {model_type} model has a bad value ({e})") from None


# ----------------------------------------------------------------------------------------------
# Export: GPTConfig -> the exact Hugging Face architecture and its config.json


def export_target(cfg: GPTConfig) -> str:
    """The Hugging Face model_type that computes exactly what `cfg` computes, or a LyreError."""
    if getattr(cfg, "arch", "gpt") != "gpt":  # before its fields: an LSTM's are all "unknown"
        raise LyreError(
            f"cannot export arch={cfg.arch!r}: only GPT runs have a Hugging Face equivalent; use "
            f"this run with lyre itself (lyre sample, chat, serve, eval)"
        )
    unknown = [
        f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)
        if f.name not in KNOWN_FIELDS and getattr(cfg, f.name) != f.default
    ]
    if unknown:
        raise LyreError(f"cannot export: option(s) {', '.join(unknown)} unknown to the exporter")
    if cfg.pos == "rope":
        return "arcee" if cfg.norm == "rmsnorm" else "starcoder2"
    if cfg.norm == "rmsnorm":
        raise LyreError(
            f"cannot export norm=rmsnorm with pos={cfg.pos}: GPT-2 needs norm=layernorm and the "
            "RMSNorm decoders in transformers (Llama-style) need pos=rope; no exact match exists"
        )
    return "gpt2"


def hf_config(cfg: GPTConfig, model_type: str, eot: int | None) -> dict[str, Any]:
    """The config.json of `model_type` (from export_target) describing `cfg`."""
    act = {"gelu": "gelu_new" if model_type == "gpt2" else "gelu_pytorch_tanh"}.get(cfg.act, cfg.act)
    common = {
        "vocab_size": cfg.vocab_size, "bos_token_id": eot, "eos_token_id": eot,
        "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": "float32", "use_cache": True,
        "initializer_range": 0.02,
    }
    if model_type == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **common,
            "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.mlp_hidden,
            "activation_function": act, "layer_norm_epsilon": LAYER_NORM_EPS,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "scale_attn_weights": True,
        }
    rope = {"rope_type": "default", "rope_theta": cfg.rope_base}
    rotary = {
        "model_type": model_type, **common,
        "hidden_size": cfg.n_embd, "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head, "head_dim": cfg.head_dim, "hidden_act": act,
        "max_position_embeddings": cfg.block_size, "attention_dropout": cfg.dropout,
        "rope_parameters": rope, "rope_theta": cfg.rope_base,  # 5.x and 4.x spellings
    }
    if model_type == "arcee":
        return {"architectures": ["ArceeForCausalLM"], **rotary, "rms_norm_eps": RMS_NORM_EPS,
                "attention_bias": cfg.bias, "mlp_bias": cfg.bias}
    return {"architectures": ["Starcoder2ForCausalLM"], **rotary, "norm_epsilon": LAYER_NORM_EPS,
            "use_bias": cfg.bias, "sliding_window": None, "residual_dropout": cfg.dropout,
            "embedding_dropout": cfg.dropout}
