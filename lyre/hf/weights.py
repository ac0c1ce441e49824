"""Weights: Hugging Face state-dict names <-> lyre names, and the model built from a directory.

lyre's GPT keeps GPT-2's module names (transformer.h.N.attn.c_attn, ...), so GPT-2 maps onto it
almost one to one. What differs, and is handled here:

  * GPT-2 stores its projections as Conv1D, weights [in, out]; ours are nn.Linear [out, in].
  * Old checkpoints carry the causal-mask buffers attn.bias / attn.masked_bias: not weights.
  * Some checkpoints prefix every key with `transformer.`, some do not.
  * lm_head.weight is usually absent because it is tied to the token embedding.

The rotary decoders (Arcee, Starcoder2) name things Llama's way and split lyre's fused c_attn
into q_proj, k_proj, v_proj.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import torch

from lyre.core.errors import LyreError
from lyre.hf.configs import hf_to_lyre_config
from lyre.hf.files import Tensors, load_hf_weights, read_hf_config
from lyre.model.gpt import GPT, GPTConfig

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


def lyre_to_hf_weights(model: GPT, model_type: str) -> Tensors:
    """The Hugging Face state dict of `model` for `model_type` (from configs.export_target)."""
    cfg = model.config
    state = _gpt2_canonical(model) if model_type == "gpt2" else dict(model.state_dict())
    return WEIGHTS_TO_HF[model_type](state, cfg)
