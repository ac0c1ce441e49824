"""LoRA: fine-tune a few million numbers instead of the whole model (Hu et al., 2021).

A Linear layer computes y = x W^T + b. LoRA freezes W and learns a low-rank change to it:

    y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T        A: [rank, in], B: [out, rank]

B starts at zero, so the adapted model starts out exactly equal to the base model, and only A
and B (rank * (in + out) numbers per layer) are trained. Afterwards the change can be folded
into the weight, W' = W + (alpha / rank) B A (`merge_lora`), and inference costs nothing extra.

    apply_lora(model, LoRAConfig(rank=8, alpha=16, targets=["attn", "mlp"]))
    adapter_state_dict(model) / load_adapter_state_dict(model, tensors)   only A and B
    save_adapter(model, path) / load_adapter(model, path)                 a small safetensors file
    adapters_disabled(model)      the base model again, for a moment (DPO's reference model)
    merge_lora(model)             fold every adapter into its weight; plain nn.Linear again
    checkpoint_adapters_only(model)  the model's state_dict (so every checkpoint) holds A and B only
    peft_adapter(model, config)   the adapter in Hugging Face PEFT's layout (lyre.hf exports it)

Targets are module names, matched on whole dotted components of the module's full name, as
PEFT's target_modules: "c_attn" is every attention input projection, "attn.c_proj" the
attention output, "mlp.c_fc" and "mlp.c_proj" the MLP, "c_proj" both output projections; the
shorthands "attn" and "mlp" stand for both projections of that sublayer. A target that matches
no Linear layer is an error, never silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save as safetensors_save

from lyre.core.errors import LyreError
from lyre.core.io import atomic_write_bytes, read_safetensors
from lyre.finetune.lora_config import DEFAULT_TARGETS, LoRAConfig  # noqa: F401  (re-exported)

SHORTHANDS = {"attn": ("attn.c_attn", "attn.c_proj"), "mlp": ("mlp.c_fc", "mlp.c_proj")}
ADAPTER_KEYS = ("lora_A", "lora_B")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (see the module docstring)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.rank, self.scaling = rank, alpha / rank
        dev, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and PEFT init A
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True  # adapters_disabled() switches it off for a moment

    @property
    def weight(self) -> torch.Tensor:  # what code that inspects a Linear expects to find
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.enabled:
            return y
        # Two thin matmuls (in -> rank -> out) instead of forming B @ A: rank is small.
        return y + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The change to the base weight the adapter stands for: scaling * B @ A, [out, in]."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing what this layer computes (with its adapter on)."""
        with torch.no_grad():
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        return self.base

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}"


# ----------------------------------------------------------------------------------------------
# Putting adapters in


def linear_names(model: nn.Module) -> list[str]:
    """The full names of every nn.Linear a target could name (the output head excluded)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name != "lm_head"]


def _matches(name: str, target: str) -> bool:
    """PEFT's rule: the target equals the module's full name or a dotted suffix of it."""
    return name == target or name.endswith("." + target)


def resolve_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """The full names of the Linear layers `targets` name; an unknown target is a LyreError."""
    names = linear_names(model)
    chosen: list[str] = []
    for target in targets:
        parts = SHORTHANDS.get(target, (target,))
        found = [n for n in names if any(_matches(n, p) for p in parts)]
        if not found:
            kinds = sorted({".".join(n.split(".")[-2:]) for n in names})
            raise LyreError(
                f"LoRA target {target!r} matches no Linear layer of this model; name one of "
                f"{', '.join(kinds)} (or the shorthands attn, mlp)"
            )
        chosen += [n for n in found if n not in chosen]
    return sorted(chosen, key=names.index)


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze `model` and put a LoRALinear around every targeted Linear; returns their names.

    Only the adapters' A and B are trainable afterwards. The model computes exactly what it
    computed before, because every B starts at zero.
    """
    config.validate()
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise LyreError("this model already has LoRA adapters; merge them first (merge_lora)")
    names = resolve_targets(model, list(config.targets))
    model.requires_grad_(False)
    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, leaf, LoRALinear(getattr(owner, leaf), config.rank, config.alpha,
                                        config.dropout))
    return names


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def has_lora(model: nn.Module) -> bool:
    return any(True for _ in lora_layers(model))


@contextmanager
def adapters_disabled(model: nn.Module):
    """The base model, for the duration of the block: every adapter is skipped.

    DPO's reference model is the model before fine-tuning; with LoRA that is this very model
    with its adapters off, so no second copy of the weights is needed.
    """
    layers = [m for _, m in lora_layers(model)]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put the plain nn.Linear back (in place).

    The merged model has the base model's state_dict keys and computes the same function as
    the adapted one (to float rounding), at the base model's cost.
    """
    for name, module in list(lora_layers(model)):
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, module.merged())
    _remove_adapter_hooks(model)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total


# ----------------------------------------------------------------------------------------------
# Adapter weights alone


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """{"transformer.h.0.attn.c_attn.lora_A": tensor, ...}: every adapter's A and B."""
    return {f"{name}.{key}": getattr(m, key).detach()
            for name, m in lora_layers(model) for key in ADAPTER_KEYS}


def load_adapter_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor],
                            source: str = "adapter") -> None:
    """Copy A and B into the model's adapters; names and shapes must match exactly."""
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]} the model lacks"
        raise LyreError(f"{source} does not fit this model's adapters: it {what} "
                        "(different lora.targets or model?)")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in tensors.items():
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise LyreError(f"{source}: {key} has shape {tuple(tensor.shape)}, the model's adapter "
                                f"{tuple(expected[key].shape)} (a different lora.rank?)")
            params[key].copy_(tensor)


def save_adapter(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> int:
    """Write the adapters alone as safetensors (atomically); returns the file's size in bytes."""
    tensors = {k: v.to("cpu").contiguous() for k, v in adapter_state_dict(model).items()}
    data = safetensors_save(tensors, metadata={"format": "pt", **(metadata or {})})
    atomic_write_bytes(path, data)
    return len(data)


def read_adapter(path: str | Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path, missing=f"adapter file {path} not found")


def load_adapter(model: nn.Module, path: str | Path) -> None:
    load_adapter_state_dict(model, read_adapter(path), str(path))


# ----------------------------------------------------------------------------------------------
# Checkpoints that hold the adapters only


def _is_adapter_key(key: str) -> bool:
    return key.rpartition(".")[2] in ADAPTER_KEYS


def _drop_frozen(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and not _is_adapter_key(k)]:
        del state_dict[key]


def _forgive_frozen(module, incompatible) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if _is_adapter_key(k)]


def checkpoint_adapters_only(model: nn.Module) -> None:
    """Make `model.state_dict()` hold only the adapters, and `load_state_dict` accept that.

    The trainer saves `model.state_dict()` in every checkpoint; with this hook a LoRA run's
    checkpoints are a few MB of A and B instead of a copy of the frozen base model, which the
    run points at instead (lyre.finetune.base). merge_lora removes the hooks.
    """
    _remove_adapter_hooks(model)
    model._lyre_adapter_hooks = (  # type: ignore[attr-defined]
        model.register_state_dict_post_hook(_drop_frozen),
        model.register_load_state_dict_post_hook(_forgive_frozen),
    )


def _remove_adapter_hooks(model: nn.Module) -> None:
    for handle in getattr(model, "_lyre_adapter_hooks", ()):
        handle.remove()
    model._lyre_adapter_hooks = ()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------
# Hugging Face PEFT's layout


def peft_adapter(model: nn.Module, config: LoRAConfig, base_model_path: str = "",
                 rename: dict[str, str] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, adapter_config) as `peft.PeftModel.from_pretrained` reads them.

    PEFT stores adapter weights as `base_model.model.<module>.lora_A.weight` ([rank, in], as
    ours) and `...lora_B.weight` ([out, rank]); its forward adds lora_B(lora_A(dropout(x))) *
    lora_alpha / r, the same function as LoRALinear. `rename` maps lyre module names to the
    exported model's (identical for GPT-2, whose module names lyre keeps).
    """
    rename = rename or {}
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model):
        hf_name = rename.get(name, name)
        for key in ADAPTER_KEYS:
            tensors[f"base_model.model.{hf_name}.{key}.weight"] = getattr(layer, key).detach().cpu()
    targets = sorted({n for n, _ in lora_layers(model)})
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_path,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        # Full names, so exactly these layers get adapters (a bare "c_proj" would take both).
        "target_modules": [rename.get(n, n) for n in targets],
        "fan_in_fan_out": False,  # set by the exporter for GPT-2's Conv1D layers
        "bias": "none",
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    return tensors, adapter_config
