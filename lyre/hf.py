"""Hugging Face interop: GPT-2 checkpoints in, lyre runs out, and back, with exact parity.

    import_hf(SRC, RUN_DIR)     a Hugging Face model directory -> an ordinary lyre run directory
    export_hf(RUN_DIR, OUT)     a lyre run -> a directory transformers loads with from_pretrained
    from_pretrained("gpt2")     a hub name or a local directory -> a LoadedRun (model + tokenizer)

lyre's GPT keeps GPT-2's module names (transformer.h.N.attn.c_attn, ...), so GPT-2 maps onto it
almost one to one. What differs, and is handled here:

  * GPT-2 stores its projections as Conv1D, weights [in, out]; ours are nn.Linear [out, in].
  * Old checkpoints carry the causal-mask buffers attn.bias / attn.masked_bias: not weights.
  * Some checkpoints prefix every key with `transformer.`, some do not.
  * lm_head.weight is usually absent because it is tied to the token embedding.

Export picks the Hugging Face architecture that computes *exactly* what the lyre model computes:

  GPT-2 (GPT2LMHeadModel)   learned/sinusoidal/no positions + LayerNorm. Sinusoidal tables are
                            written into wpe and lyre's "no bias" becomes zero biases: the same
                            function, only trainable in transformers.
  Arcee (ArceeForCausalLM)  rotary + RMSNorm: a Llama-style decoder whose MLP is not gated.
  Starcoder2                rotary + LayerNorm (zero norm biases when lyre has none).

Llama itself is never a target: its MLP is gated (down(silu(gate(x)) * up(x))) and lyre's is
not, so no lyre model equals a Llama. Anything without an exact match is refused with the
options that block it. Tolerances are float rounding only; tests/test_hf.py proves the parity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from lyre import checkpoint as ckpt
from lyre.config import DataConfig, RunConfig, TrainConfig, save_config
from lyre.errors import LyreError
from lyre.model.gpt import GPT, GPTConfig
from lyre.tokenizers import (
    EOT,
    BPETokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    load_tokenizer,
)

Tensors = dict[str, torch.Tensor]

# Files of a Hugging Face model directory that lyre reads.
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
HUB_FILES = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "vocab.json", "merges.txt", "special_tokens_map.json", "model.safetensors*",
]
# What export writes (and what --force may replace in an existing output directory).
EXPORT_FILES = [
    "config.json", "generation_config.json", SAFETENSORS, SAFETENSORS_INDEX, BIN, BIN_INDEX,
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt",
]

# Activations: Hugging Face name -> lyre name. Every tanh-approximate GELU is lyre's gelu; the
# exact (erf) "gelu" is a different function and is refused, never approximated.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
ACT_FROM_HF = {**{name: "gelu" for name in TANH_GELUS}, "relu": "relu", "relu2": "relu2"}

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, used by lyre; GPT-2's layer_norm_epsilon
RMS_NORM_EPS = 1e-6  # lyre's RMSNorm

# GPTConfig fields the converters below understand. A field added later (say, grouped-query
# attention) makes export refuse unless it keeps its default: better than a silent mismatch.
KNOWN_FIELDS = {
    "arch", "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias", "pos",
    "norm", "act", "mlp_ratio", "tie_embeddings", "rope_base", "attn_impl",
}


# ----------------------------------------------------------------------------------------------
# Reading a Hugging Face directory


def _first_line(e: BaseException) -> str:
    """LyreErrors are one line; library exceptions are sometimes many."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def read_hf_config(src: Path) -> dict[str, Any]:
    path = Path(src) / "config.json"
    if not path.is_file():
        raise LyreError(f"{path} not found; SRC must be a Hugging Face model directory")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LyreError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise LyreError(f"{path} must hold a JSON object")
    return raw


def load_hf_weights(src: Path) -> Tensors:
    """All tensors of a checkpoint: safetensors first, else pytorch_model.bin (never unpickled
    beyond plain tensors: torch.load(weights_only=True)). Sharded checkpoints are followed."""
    src = Path(src)
    for single, index, reader in (
        (SAFETENSORS, SAFETENSORS_INDEX, _read_safetensors),
        (BIN, BIN_INDEX, _read_bin),
    ):
        if (src / single).is_file():
            return reader(src / single)
        if (src / index).is_file():
            tensors: Tensors = {}
            for shard in _shards(src / index):
                tensors.update(reader(src / shard))
            return tensors
    raise LyreError(f"no weights in {src}: expected {SAFETENSORS} or {BIN} (or a sharded index)")


def _shards(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise LyreError(f"{index} is not a valid shard index (no weight_map)") from None


def _read_safetensors(path: Path) -> Tensors:
    if not path.is_file():
        raise LyreError(f"{path} not found; the checkpoint is incomplete")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise LyreError(f"{path} is not a readable safetensors file ({_first_line(e)})") from None


def _read_bin(path: Path) -> Tensors:
    if not path.is_file():
        raise LyreError(f"{path} not found; the checkpoint is incomplete")
    try:
        # weights_only: a pickle may run code when loaded; this one may only hold tensors.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise LyreError(
            f"{path} could not be loaded as plain tensors ({_first_line(e)}); "
            f"use a {SAFETENSORS} copy of the checkpoint"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LyreError(f"{path} does not hold a flat dict of tensors (a state_dict)")
    return state


# ----------------------------------------------------------------------------------------------
# Architectures: config translation both ways


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
# Weights: Hugging Face names <-> lyre names

_GPT2_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")  # causal masks, not c_attn.bias
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_GPT2_MODULES = ("wte.", "wpe.", "h.", "ln_f.")


def _gpt2_from_hf(hf: Tensors, cfg: GPTConfig) -> Tensors:
    out: Tensors = {}
    for key, tensor in hf.items():
        key = key.removeprefix("transformer.")
        if _GPT2_BUFFER.match(key):
            continue
        if key == "lm_head.weight":
            if not cfg.tie_embeddings:
                out[key] = tensor
            continue  # tied: the embedding is the head, as transformers itself does
        if not key.startswith(_GPT2_MODULES):
            out[key] = tensor  # reported as unexpected under its own name
            continue
        out["transformer." + key] = tensor.t() if key.endswith(_CONV1D) else tensor
    return out


def _gpt2_to_hf(lyre: Tensors, cfg: GPTConfig) -> Tensors:
    out: Tensors = {}
    for key, tensor in lyre.items():
        if key == "lm_head.weight":
            if not cfg.tie_embeddings:
                out[key] = tensor
            continue
        out[key] = tensor.t() if key.endswith(_CONV1D) else tensor
    return out


def _rotary_names(cfg: GPTConfig, model_type: str) -> list[tuple[str, str]]:
    """(lyre key, Hugging Face key) pairs of the rotary decoders, except the fused q/k/v."""
    mlp_in, mlp_out = ("c_fc", "c_proj") if model_type == "starcoder2" else ("up_proj", "down_proj")
    pairs = [("transformer.wte.weight", "model.embed_tokens.weight")]
    suffixes = ["weight"] + (["bias"] if cfg.norm == "layernorm" and cfg.bias else [])
    linear = ["weight"] + (["bias"] if cfg.bias else [])
    for i in range(cfg.n_layer):
        lyre, hf = f"transformer.h.{i}.", f"model.layers.{i}."
        pairs += [(f"{lyre}ln_1.{s}", f"{hf}input_layernorm.{s}") for s in suffixes]
        pairs += [(f"{lyre}ln_2.{s}", f"{hf}post_attention_layernorm.{s}") for s in suffixes]
        pairs += [(f"{lyre}attn.c_proj.{s}", f"{hf}self_attn.o_proj.{s}") for s in linear]
        pairs += [(f"{lyre}mlp.c_fc.{s}", f"{hf}mlp.{mlp_in}.{s}") for s in linear]
        pairs += [(f"{lyre}mlp.c_proj.{s}", f"{hf}mlp.{mlp_out}.{s}") for s in linear]
    pairs += [(f"transformer.ln_f.{s}", f"model.norm.{s}") for s in suffixes]
    if not cfg.tie_embeddings:
        pairs.append(("lm_head.weight", "lm_head.weight"))
    return pairs


def _qkv_names(cfg: GPTConfig) -> list[tuple[str, list[str]]]:
    """lyre's fused c_attn = rows [q; k; v] of the separate q_proj, k_proj, v_proj."""
    linear = ["weight"] + (["bias"] if cfg.bias else [])
    return [
        (f"transformer.h.{i}.attn.c_attn.{s}",
         [f"model.layers.{i}.self_attn.{p}_proj.{s}" for p in "qkv"])
        for i in range(cfg.n_layer) for s in linear
    ]


def _zero_norm_biases(cfg: GPTConfig) -> list[str]:
    """Starcoder2's LayerNorms always have a bias; a lyre model without biases exports zeros."""
    if cfg.norm != "layernorm" or cfg.bias:
        return []
    names = [f"model.layers.{i}.{n}.bias" for i in range(cfg.n_layer)
             for n in ("input_layernorm", "post_attention_layernorm")]
    return names + ["model.norm.bias"]


def _rotary_from_hf(model_type: str) -> Callable[[Tensors, GPTConfig], Tensors]:
    def convert(hf: Tensors, cfg: GPTConfig) -> Tensors:
        hf = dict(hf)
        out = {lyre: hf.pop(name) for lyre, name in _rotary_names(cfg, model_type) if name in hf}
        for lyre, names in _qkv_names(cfg):
            if all(n in hf for n in names):
                out[lyre] = torch.cat([hf.pop(n) for n in names], dim=0)
        for name in _zero_norm_biases(cfg):
            if name in hf and hf.pop(name).abs().max() > 0:
                raise LyreError(f"{name} is not zero but use_bias=false; lyre cannot represent it")
        if cfg.tie_embeddings:
            hf.pop("lm_head.weight", None)
        hf = {k: v for k, v in hf.items() if not k.endswith("rotary_emb.inv_freq")}  # a buffer
        out.update(hf)  # whatever is left is reported as unexpected by _check_keys
        return out

    return convert


def _rotary_to_hf(model_type: str) -> Callable[[Tensors, GPTConfig], Tensors]:
    def convert(lyre: Tensors, cfg: GPTConfig) -> Tensors:
        out = {name: lyre[key] for key, name in _rotary_names(cfg, model_type)}
        for key, names in _qkv_names(cfg):
            for name, part in zip(names, lyre[key].chunk(3, dim=0), strict=True):
                out[name] = part
        for name in _zero_norm_biases(cfg):
            out[name] = torch.zeros(cfg.n_embd)
        return out

    return convert


WEIGHTS_FROM_HF = {
    "gpt2": _gpt2_from_hf,
    "arcee": _rotary_from_hf("arcee"),
    "starcoder2": _rotary_from_hf("starcoder2"),
}
WEIGHTS_TO_HF = {
    "gpt2": _gpt2_to_hf,
    "arcee": _rotary_to_hf("arcee"),
    "starcoder2": _rotary_to_hf("starcoder2"),
}


def _check_keys(expected: Tensors, loaded: Tensors, src: Path) -> None:
    """One line naming the first key that is missing, unexpected or of the wrong shape."""
    for key, tensor in expected.items():
        if key not in loaded:
            raise LyreError(
                f"{src}: missing weight for '{key}'; the checkpoint does not match its config.json"
            )
        if tuple(loaded[key].shape) != tuple(tensor.shape):
            raise LyreError(
                f"{src}: '{key}' has shape {tuple(loaded[key].shape)} but config.json implies "
                f"{tuple(tensor.shape)}"
            )
    extra = sorted(set(loaded) - set(expected))
    if extra:
        raise LyreError(
            f"{src}: unexpected weight '{extra[0]}' ({len(extra)} in all); the checkpoint does "
            "not match its config.json"
        )


def hf_to_lyre_model(src: Path) -> tuple[GPTConfig, GPT]:
    """Build the lyre model of a Hugging Face directory, weights loaded, in eval mode."""
    src = Path(src)
    hf_config = read_hf_config(src)
    cfg = hf_to_lyre_config(hf_config)
    weights = load_hf_weights(src)
    state = WEIGHTS_FROM_HF[hf_config["model_type"]](weights, cfg)
    if cfg.tie_embeddings and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    with torch.device("meta"):  # shapes only: no time spent on a random init
        expected = GPT(cfg).state_dict()
    _check_keys(expected, state, src)
    model = GPT(cfg)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return cfg, model.eval()


# ----------------------------------------------------------------------------------------------
# Tokenizers in


def _gpt2_files_from_tokenizer_json(data: dict[str, Any]) -> tuple[dict[str, int], list[str]] | None:
    """vocab and merges of a byte-level BPE tokenizer.json (None if it is not one)."""
    model = data.get("model") or {}
    if model.get("type") != "BPE" or (data.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        return None
    vocab = dict(model.get("vocab") or {})
    for added in data.get("added_tokens") or []:
        vocab.setdefault(added["content"], added["id"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return vocab, merges


def _write_gpt2_files(dest: Path, vocab: dict[str, int], merges: list[str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "encoder.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (dest / "tokenizer.json").write_text(json.dumps({"kind": "gpt2", "vocab_size": len(vocab)}) + "\n")


def _read_merges(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").split("\n")
    return [line for line in lines if line and not line.startswith("#version")]


def _char_vocab(data: dict[str, Any]) -> tuple[list[str], str | None] | None:
    """The characters of a tokenizer.json written by export_hf for a char tokenizer."""
    model = data.get("model") or {}
    if model.get("type") != "WordLevel":
        return None
    vocab = model.get("vocab") or {}
    chars = sorted(vocab, key=vocab.get)
    if any(len(c) != 1 for c in chars) or chars != sorted(chars):
        return None
    if sorted(vocab.values()) != list(range(len(chars))):  # ids must be 0..n-1, no gaps
        return None
    return chars, model.get("unk_token") if model.get("unk_token") in vocab else None


def import_tokenizer(src: Path, dest: Path) -> Tokenizer:
    """Write the tokenizer of a Hugging Face directory as a lyre tokenizer directory and load it.

    GPT-2's BPE (vocab.json + merges.txt, or the same inside tokenizer.json) becomes lyre's gpt2
    tokenizer (tiktoken); another byte-level BPE tokenizer.json becomes a bpe tokenizer; a
    single-character WordLevel (what export_hf writes for char models) becomes a char tokenizer.
    """
    src, dest = Path(src), Path(dest)
    if (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        vocab = _read_json(src / "vocab.json")
        if _is_gpt2_vocab(vocab):
            _write_gpt2_files(dest, vocab, _read_merges(src / "merges.txt"))
            return GPT2Tokenizer(dest)  # checks that the merges belong to the vocabulary
    path = src / "tokenizer.json"
    if not path.is_file():
        raise LyreError(
            f"no usable tokenizer in {src} (GPT-2's vocab.json + merges.txt, or tokenizer.json); "
            "pass one with --tokenizer gpt2:DIR or a lyre tokenizer directory"
        )
    data = _read_json(path)
    if (chars := _char_vocab(data)) is not None:
        tokenizer: Tokenizer = CharTokenizer(chars[0], unk=chars[1])
    elif (bpe := _gpt2_files_from_tokenizer_json(data)) is not None:
        if _is_gpt2_vocab(bpe[0]):  # GPT-2's own: run it on tiktoken, like every gpt2 run
            _write_gpt2_files(dest, *bpe)
            return GPT2Tokenizer(dest)
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tokenizer = BPETokenizer(HFTokenizer.from_str(json.dumps(data)))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise LyreError(f"{path} is not a valid tokenizers file ({_first_line(e)})") from None
    else:
        raise LyreError(f"{path} is neither a byte-level BPE nor a char vocabulary; lyre cannot use it")
    tokenizer.save(dest)
    return tokenizer


def _is_gpt2_vocab(vocab: Any) -> bool:
    return isinstance(vocab, dict) and len(vocab) == 50257 and vocab.get(EOT) == 50256


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LyreError(f"{path} is not valid JSON ({e})") from None


def _tokenizer_for_import(src: Path, dest: Path, spec: str | None) -> Tokenizer:
    if spec is None:
        return import_tokenizer(src, dest)
    tokenizer = load_tokenizer(spec)  # "gpt2:DIR" or a lyre tokenizer directory
    tokenizer.save(dest)
    return load_tokenizer(dest)


def _tokenizer_spec(tokenizer: Tokenizer, directory: Path) -> str:
    """A data.tokenizer spec for the run's config (gpt2 points at the run's own files)."""
    if tokenizer.kind == "gpt2":
        return f"gpt2:{directory.resolve()}"
    return "char" if tokenizer.kind == "char" else f"bpe:{tokenizer.vocab_size}"


# ----------------------------------------------------------------------------------------------
# Import


def _clear_run(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LyreError(f"{out} is a file; --out must be a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise LyreError(
                f"{out} is not empty; choose another --out or pass --force to replace the run in it"
            )
        for name in ("config.json", "tokenizer", "checkpoints", "metrics.jsonl", "loss.png"):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def import_hf(
    src_dir: str | Path, out_run_dir: str | Path, *, tokenizer: str | None = None, force: bool = False
) -> Path:
    """Turn a Hugging Face model directory into a lyre run directory; returns its path.

    The run holds config.json, tokenizer/ and checkpoints/last (weights only, step 0), so
    `lyre sample`, evaluation and fine-tuning (train.init_from=RUN_DIR) accept it. `tokenizer`
    ("gpt2:DIR" or a lyre tokenizer directory) replaces the one in SRC, or supplies it.
    """
    src, out = Path(src_dir), Path(out_run_dir)
    # Model and tokenizer are both converted and checked before the output is touched.
    cfg, model = hf_to_lyre_model(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tok = _tokenizer_for_import(src, Path(tmp) / "tokenizer", tokenizer)
        if tok.vocab_size > cfg.vocab_size:
            raise LyreError(
                f"the tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size}"
            )
        _clear_run(out, force)
        (Path(tmp) / "tokenizer").rename(out / "tokenizer")
    model_type = read_hf_config(src)["model_type"]
    state = {"step": 0, "imported_from": str(src.resolve()), "model_type": model_type}
    ckpt.save_checkpoint(out, "last", model=model, optimizer=None, state=state)
    data = DataConfig(tokenizer=_tokenizer_spec(tok, out / "tokenizer"))
    save_config(RunConfig(model=cfg, data=data, train=TrainConfig()), out / "config.json")
    return out


# ----------------------------------------------------------------------------------------------
# Hub and from_pretrained


def _looks_like_repo_id(text: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text)) and not text.startswith((".", "~"))


def resolve_source(name_or_dir: str | Path, revision: str | None = None) -> Path:
    """A local directory as is; otherwise a hub repo id, downloaded (or found in the HF cache)."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _looks_like_repo_id(str(name_or_dir)):
        raise LyreError(f"{name_or_dir} is not a Hugging Face model directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise LyreError(
            f"{name_or_dir} is not a local directory and huggingface_hub is not installed"
        ) from None
    try:
        local = Path(snapshot_download(str(name_or_dir), revision=revision, allow_patterns=HUB_FILES))
        if not any(local.glob("model*.safetensors")):  # an older repo: pickled weights only
            local = Path(snapshot_download(str(name_or_dir), revision=revision,
                                           allow_patterns=[*HUB_FILES, "pytorch_model*.bin*"]))
    except Exception as e:  # no network, unknown repo, gated repo, ...
        raise LyreError(
            f"cannot get {name_or_dir!r} from the Hugging Face hub ({type(e).__name__}: "
            f"{_first_line(e)}); pass a local model directory instead"
        ) from None
    return local


def _cache_dir() -> Path:
    if os.environ.get("LYRE_CACHE"):
        return Path(os.environ["LYRE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lyre"


def _tokenizer_cache(src: Path) -> Path:
    """Tokenizers are tiny; an in-memory model keeps its own next to lyre's cache, by content."""
    digest = hashlib.sha256()
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        if (src / name).is_file():
            digest.update(name.encode() + (src / name).read_bytes())
    return _cache_dir() / "tokenizers" / digest.hexdigest()[:16]


def from_pretrained(
    name_or_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    device: str | torch.device = "auto",
    revision: str | None = None,
    force: bool = False,
):
    """A Hugging Face model (hub name such as "gpt2", or a local directory) as a lyre LoadedRun.

    Hub names go through huggingface_hub.snapshot_download, then take the very same path as a
    local directory. With `run_dir`, the import is also written there as a run directory (for
    fine-tuning); without it, the model lives in memory only.
    """
    from lyre.runs import LoadedRun, load_run
    from lyre.train import resolve_device

    src = resolve_source(name_or_dir, revision)
    if run_dir is not None:
        import_hf(src, run_dir, force=force)
        return load_run(run_dir, "last", device)
    cfg, model = hf_to_lyre_model(src)
    tok_dir = _tokenizer_cache(src)
    tokenizer = import_tokenizer(src, tok_dir)
    config = RunConfig(model=cfg, data=DataConfig(tokenizer=_tokenizer_spec(tokenizer, tok_dir)))
    device = resolve_device(str(device))
    from lyre.speed import prepare_for_inference  # as load_run does: ready to generate

    return LoadedRun(src, config, tokenizer, prepare_for_inference(model.to(device)), "hf", device)


# ----------------------------------------------------------------------------------------------
# Export


def export_target(cfg: GPTConfig) -> str:
    """The Hugging Face model_type that computes exactly what `cfg` computes, or a LyreError."""
    unknown = [
        f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)
        if f.name not in KNOWN_FIELDS and getattr(cfg, f.name) != f.default
    ]
    if unknown:
        raise LyreError(f"cannot export: option(s) {', '.join(unknown)} unknown to the exporter")
    if cfg.arch != "gpt":
        raise LyreError(
            f"cannot export arch={cfg.arch!r}: only the gpt architecture has a Hugging Face equivalent"
        )
    if cfg.pos == "rope":
        return "arcee" if cfg.norm == "rmsnorm" else "starcoder2"
    if cfg.norm == "rmsnorm":
        raise LyreError(
            f"cannot export norm=rmsnorm with pos={cfg.pos}: GPT-2 needs norm=layernorm and the "
            "RMSNorm decoders in transformers (Llama-style) need pos=rope; no exact match exists"
        )
    return "gpt2"


def _gpt2_canonical(model: GPT) -> Tensors:
    """The state of the GPT-2-shaped lyre model (learned positions, biases) equal to `model`.

    Sinusoidal tables become the wpe weight; pos=none a zero wpe; bias=False zero biases.
    """
    cfg = model.config
    state = dict(model.state_dict())
    if cfg.pos == "sinusoidal":
        state["transformer.wpe.weight"] = model.pos_table
    elif cfg.pos == "none":
        state["transformer.wpe.weight"] = torch.zeros(cfg.block_size, cfg.n_embd)
    with torch.device("meta"):
        full = GPT(dataclasses.replace(cfg, bias=True, pos="learned")).state_dict()
    for key, ref in full.items():
        if key not in state:  # a bias lyre does not have: zero is the same function
            state[key] = torch.zeros(ref.shape)
    return state


def _hf_config(cfg: GPTConfig, model_type: str, eot: int | None) -> dict[str, Any]:
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


def _safetensors_bytes(tensors: Tensors) -> bytes:
    # transformers checks the "format" metadata; tensors must not share memory in the file.
    plain = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()}
    return safetensors_save(plain, metadata={"format": "pt"})


# ----------------------------------------------------------------------------------------------
# Tokenizers out


def _hf_tokenizer_files(tokenizer: Tokenizer, block_size: int) -> dict[str, str]:
    """File name -> text of a tokenizer that AutoTokenizer loads and that gives lyre's ids."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,  # would turn "a ." into "a." on decode
    }
    files: dict[str, str] = {}
    if tokenizer.kind == "gpt2":
        vocab = json.loads((tokenizer.directory / "encoder.json").read_text(encoding="utf-8"))
        merges = _read_merges(tokenizer.directory / "vocab.bpe")
        bpe = models.BPE(vocab, [tuple(m.split(" ")) for m in merges])
        hf = HFTokenizer(bpe)
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        hf.post_processor = processors.ByteLevel(trim_offsets=False)
        hf.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
        files["vocab.json"] = json.dumps(vocab, ensure_ascii=False)
        files["merges.txt"] = "#version: 0.2\n" + "\n".join(merges) + "\n"
        config.update(tokenizer_class="GPT2Tokenizer", add_prefix_space=False, add_bos_token=False)
    elif tokenizer.kind == "bpe":
        hf = HFTokenizer.from_str(tokenizer.hf.to_str())
    elif tokenizer.kind == "char":
        # One WordLevel token per character; the Split isolates every character, newlines too.
        vocab = {c: i for i, c in enumerate(tokenizer.chars)}
        hf = HFTokenizer(models.WordLevel(vocab, unk_token=tokenizer.unk))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        hf.decoder = decoders.Fuse()
        if tokenizer.unk is not None:
            config["unk_token"] = tokenizer.unk
    else:
        raise LyreError(f"cannot export a {tokenizer.kind!r} tokenizer to Hugging Face format")
    if tokenizer.eot_id is not None:
        config.update(bos_token=EOT, eos_token=EOT)
    files["tokenizer.json"] = hf.to_str(pretty=True)
    files["tokenizer_config.json"] = json.dumps(config, indent=2)
    return files


def _clear_export(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LyreError(f"{out} is a file; --out must be a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise LyreError(f"{out} is not empty; choose another --out or pass --force to overwrite")
        for name in EXPORT_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def export_hf(
    run_dir: str | Path, out_dir: str | Path, *, checkpoint: str = "best", force: bool = False
) -> Path:
    """Write a run as a Hugging Face model directory; returns its path.

    transformers.AutoModelForCausalLM.from_pretrained(OUT) then loads it with no missing or
    unexpected keys (GPT2LMHeadModel for GPT-2-style models) and AutoTokenizer gives the ids of
    lyre's tokenizer. Models without an exact Hugging Face equivalent are refused.
    """
    from lyre.runs import load_run

    run = load_run(run_dir, checkpoint, "cpu", for_inference=False)
    cfg = run.config.model
    model_type = export_target(cfg)
    tokenizer_files = _hf_tokenizer_files(run.tokenizer, cfg.block_size)
    state = _gpt2_canonical(run.model) if model_type == "gpt2" else dict(run.model.state_dict())
    tensors = WEIGHTS_TO_HF[model_type](state, cfg)
    payload = _safetensors_bytes(tensors)  # everything is ready before the output is touched
    out = Path(out_dir)
    _clear_export(out, force)
    ckpt.atomic_write_bytes(out / SAFETENSORS, payload)
    for name, text in tokenizer_files.items():
        ckpt.atomic_write_text(out / name, text)
    eot = run.tokenizer.eot_id
    generation = {"bos_token_id": eot, "eos_token_id": eot}
    ckpt.atomic_write_text(out / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    hf_config = _hf_config(cfg, model_type, eot)
    ckpt.atomic_write_text(out / "config.json", json.dumps(hf_config, indent=2) + "\n")
    return out


__all__ = [
    "export_hf", "export_target", "from_pretrained", "hf_to_lyre_config", "hf_to_lyre_model",
    "import_hf", "import_tokenizer", "load_hf_weights", "resolve_source",
]
