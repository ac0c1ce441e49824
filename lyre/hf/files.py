"""Reading a Hugging Face model directory: config.json, weights (single or sharded), JSON.

Nothing here knows about architectures; it turns files into a dict and a name -> tensor map,
and every failure into a one-line LyreError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save

from lyre.core.errors import LyreError, first_line
from lyre.core.io import read_safetensors

Tensors = dict[str, torch.Tensor]

# Files of a Hugging Face model directory that lyre reads.
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LyreError(f"{path} is not valid JSON ({e})") from None


def read_hf_config(src: Path) -> dict[str, Any]:
    path = Path(src) / "config.json"
    if not path.is_file():
        raise LyreError(f"{path} not found; SRC must be a Hugging Face model directory")
    raw = read_json(path)
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


def safetensors_bytes(tensors: Tensors) -> bytes:
    """A model.safetensors file as transformers wants it: "format" metadata, fp32, on CPU."""
    # Tensors must not share memory in the file.
    plain = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()}
    return safetensors_save(plain, metadata={"format": "pt"})


def _shards(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise LyreError(f"{index} is not a valid shard index (no weight_map)") from None


def _read_safetensors(path: Path) -> Tensors:
    return read_safetensors(path, missing=f"{path} not found; the checkpoint is incomplete")


def _read_bin(path: Path) -> Tensors:
    if not path.is_file():
        raise LyreError(f"{path} not found; the checkpoint is incomplete")
    try:
        # weights_only: a pickle may run code when loaded; this one may only hold tensors.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise LyreError(
            f"{path} could not be loaded as plain tensors ({first_line(e)}); "
            f"use a {SAFETENSORS} copy of the checkpoint"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LyreError(f"{path} does not hold a flat dict of tensors (a state_dict)")
    return state
