"""Checkpoints: safetensors for tensors, JSON for everything else, never pickle.

A checkpoint is a directory RUN_DIR/checkpoints/NAME/ holding

    model.safetensors      the model's state_dict (tied weights stored once)
    optimizer.safetensors  the optimizer's tensors; its structure rides along as JSON metadata
    state.json             {"format", "version", "files": {file: {"bytes", "sha256"}}, "state"}

where "state" is whatever the trainer passes in (step, best_val_loss, config, RNG states, ...).

Why not torch.save? It pickles, and unpickling a file can run arbitrary code; safetensors
files are plain tensors plus a JSON header, so loading a stranger's checkpoint is safe.

Why a directory swap? A checkpoint is three files that must agree with each other. We write
them into NAME.tmp/, fsync, then rename NAME -> NAME.old, NAME.tmp -> NAME and delete NAME.old.
A writer killed at any moment leaves either the old or the new checkpoint complete, and the
reader knows where to look (NAME, else NAME.old; NAME.tmp is never trusted).

Why checksums? A disk that fills up or a copy that stops halfway leaves a short file; the sizes
and sha256 sums in state.json turn that into a clear error instead of garbage weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from lyre.core.errors import LyreError, first_line
from lyre.core.io import fsync_dir as _fsync_dir
from lyre.core.io import read_safetensors_and_metadata

FORMAT = "lyre-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CHECKPOINTS = "checkpoints"
_TMP, _OLD = ".tmp", ".old"

__all__ = [
    "checkpoint_exists",
    "checkpoint_step",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model_state",
    "save_checkpoint",
]




# ----------------------------------------------------------------------------------------------
# Durable, atomic file writes


def _write_durable(path: Path, data: bytes) -> None:
    """Write bytes and fsync them: the file is on disk when this returns, not just in a cache."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------
# Tensors <-> safetensors files


def _dedup_shared(
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split tensors into unique ones and aliases {alias: kept_name}.

    safetensors refuses tensors that share memory. A tied lm_head.weight is the very same
    tensor as the token embedding, so we store it once and record the alias; at load time
    both names get the same tensor back and load_state_dict copies it into the (still tied)
    parameter. Tensors that merely share a storage without being identical views are cloned.
    """
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storage_users: dict[tuple, int] = {}
    for t in tensors.values():
        if t.numel() > 0 and t.device.type != "meta":
            key = (t.device, t.untyped_storage().data_ptr())
            storage_users[key] = storage_users.get(key, 0) + 1
    for name, t in tensors.items():
        t = t.detach()
        if t.numel() == 0 or t.device.type == "meta":
            unique[name] = t.contiguous()
            continue
        view = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if view in seen:
            aliases[name] = seen[view]
            continue
        seen[view] = name
        shared = storage_users[(t.device, t.untyped_storage().data_ptr())] > 1
        unique[name] = t.clone(memory_format=torch.contiguous_format) if shared else t.contiguous()
    return unique, aliases


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> bytes:
    """Serialize tensors (shared memory handled) with JSON metadata into safetensors bytes."""
    unique, aliases = _dedup_shared(tensors)
    meta = {key: json.dumps(value) for key, value in metadata.items()}
    meta["aliases"] = json.dumps(aliases)
    return safetensors_save({k: v.cpu() for k, v in unique.items()}, metadata=meta)


def _read_safetensors(path: Path, device: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by _safetensors_bytes: (tensors with aliases, metadata)."""
    damaged = "; delete that checkpoint and use another or retrain"
    tensors, raw_meta = read_safetensors_and_metadata(
        path, f"{path} is missing; the checkpoint is incomplete{damaged}", device=device, hint=damaged)
    try:
        meta = {key: json.loads(value) for key, value in raw_meta.items()}
    except ValueError as e:
        raise LyreError(f"{path} is corrupt (its metadata is not JSON){damaged}") from e
    for alias, kept in meta.pop("aliases", {}).items():
        tensors[alias] = tensors[kept]
    return tensors, meta


def _file_record(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _verify_file(path: Path, record: dict[str, Any]) -> None:
    """Compare a file's size and sha256 with what save_checkpoint recorded in state.json."""
    if not path.is_file():
        raise LyreError(
            f"{path} is missing; the checkpoint is incomplete, delete it and use another or retrain"
        )
    size = path.stat().st_size
    if size != record["bytes"]:
        raise LyreError(
            f"{path} is truncated or corrupt ({size} bytes, expected {record['bytes']}); "
            "delete that checkpoint and use another or retrain"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != record["sha256"]:
        raise LyreError(
            f"{path} is corrupt (sha256 mismatch); delete that checkpoint and use another or retrain"
        )


# ----------------------------------------------------------------------------------------------
# Optimizer state_dict <-> (flat tensors, JSON skeleton)


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Turn a nested state (dicts/lists/tuples/tensors/scalars) into JSON plus flat tensors.

    Every tensor moves to `tensors[path]` (e.g. "state.0.exp_avg") and is replaced by
    {"__tensor__": path}. Tuples and int-keyed dicts (optimizer.state is keyed by param index)
    are tagged so they come back as the same Python types.
    """
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj
        return {"__tensor__": path}
    if isinstance(obj, dict):
        items = {k: _flatten(v, _join(path, k), tensors) for k, v in obj.items()}
        if all(isinstance(k, str) for k in obj):
            return items
        if all(isinstance(k, int) for k in obj):
            return {"__int_keys__": {str(k): v for k, v in items.items()}}
        raise TypeError(f"cannot checkpoint a dict with mixed key types at '{path}'")
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, _join(path, i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, _join(path, i), tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at '{path}'")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of _flatten."""
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if "__int_keys__" in obj:
        return {int(k): _unflatten(v, tensors) for k, v in obj["__int_keys__"].items()}
    return {k: _unflatten(v, tensors) for k, v in obj.items()}


# ----------------------------------------------------------------------------------------------
# Where checkpoints live


def _check_name(name: str) -> None:
    """Names are single directory names; .tmp/.old are reserved for the swap."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or name.endswith((_TMP, _OLD))
    ):
        raise LyreError(
            f"invalid checkpoint name '{name}'; use a plain name such as 'last' or 'best'"
        )


def _candidates(run_dir: Path, name: str) -> list[Path]:
    """Where a complete checkpoint NAME may be, in order of preference."""
    root = Path(run_dir) / CHECKPOINTS
    return [root / name, root / f"{name}{_OLD}"]


def _find(run_dir: Path, name: str) -> Path | None:
    for path in _candidates(run_dir, name):
        if path.is_dir():
            return path
    return None


def _resolve(run_dir: Path, name: str) -> Path:
    """The directory to read checkpoint NAME from, or a LyreError that says what to do."""
    run_dir = Path(run_dir)
    _check_name(name)
    if not run_dir.is_dir():
        raise LyreError(f"run directory {run_dir} does not exist; train first with `lyre train`")
    found = _find(run_dir, name)
    if found is not None:
        return found
    others = _names(run_dir)
    if not others:
        raise LyreError(f"no checkpoint in {run_dir}; train first with `lyre train`")
    raise LyreError(f"no checkpoint '{name}' in {run_dir}; available: {', '.join(others)}")


def _names(run_dir: Path) -> list[str]:
    """Names of the complete checkpoints in a run (a lone NAME.old counts as NAME)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    names = set()
    for path in root.iterdir():
        if not path.is_dir() or path.name.endswith(_TMP):
            continue
        names.add(path.name.removesuffix(_OLD))
    return sorted(n for n in names if _find(run_dir, n) is not None)


def checkpoint_exists(run_dir: Path, name: str) -> bool:
    """True if checkpoint NAME can be loaded from (it has a state.json, possibly in NAME.old)."""
    _check_name(name)
    found = _find(Path(run_dir), name)
    return found is not None and (found / STATE_FILE).is_file()


def checkpoint_step(run_dir: Path, name: str) -> int | None:
    """The training step recorded in checkpoint NAME, or None if its state cannot be read."""
    found = _find(Path(run_dir), name)
    try:
        step = _read_header(found)["state"].get("step") if found is not None else None
    except (LyreError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def latest_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint that got furthest: the highest recorded step, `last` on a tie; None if none.
    A checkpoint whose state cannot be read comes after every readable one.

    By step, not by file time: `cp -r` or `scp -r` of a run directory gives every file a new
    time in whatever order, and resuming from an older `best` would silently throw work away.
    """
    found = []
    for name in _names(Path(run_dir)):
        step = checkpoint_step(run_dir, name)  # unreadable: ranked last, so loading it says why
        found.append((-1 if step is None else step, name == "last", name))
    return max(found)[-1] if found else None


# ----------------------------------------------------------------------------------------------
# Saving


def _unwrap(model: nn.Module) -> nn.Module:
    """torch.compile wraps a model and prefixes its keys with `_orig_mod.`; store plain keys."""
    return getattr(model, "_orig_mod", model)


def save_checkpoint(
    run_dir: Path,
    name: str,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
) -> Path:
    """Write RUN_DIR/checkpoints/NAME/ atomically and return its path.

    `state` must be JSON-serializable (step, best_val_loss, config, lyre.core.rng.capture_rng_state(), ...);
    load_checkpoint returns it unchanged.
    """
    _check_name(name)
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    # Serialize everything before touching the disk, so bad input fails with nothing written.
    payloads = {MODEL_FILE: _safetensors_bytes(_unwrap(model).state_dict(), {"format": FORMAT})}
    if optimizer is not None:
        tensors: dict[str, torch.Tensor] = {}
        skeleton = _flatten(optimizer.state_dict(), "", tensors)
        payloads[OPTIMIZER_FILE] = _safetensors_bytes(tensors, {"optimizer": skeleton})
    header = {
        "format": FORMAT,
        "version": VERSION,
        "files": {file: _file_record(data) for file, data in payloads.items()},
        "state": state,
    }
    payloads[STATE_FILE] = (json.dumps(header, indent=2) + "\n").encode("utf-8")

    tmp, final, old = root / f"{name}{_TMP}", root / name, root / f"{name}{_OLD}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from a writer that was killed
    tmp.mkdir()
    for file, data in payloads.items():
        _write_durable(tmp / file, data)
    _fsync_dir(tmp)
    _swap_in(tmp, final, old)
    return final


def _swap_in(tmp: Path, final: Path, old: Path) -> None:
    """tmp -> final by renames only; at every instant final or old is a complete checkpoint."""
    if final.exists():
        if old.exists():
            shutil.rmtree(old)  # a previous swap died while deleting it; final is good
        final.rename(old)
    tmp.rename(final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


# ----------------------------------------------------------------------------------------------
# Loading


def _read_header(ckpt: Path) -> dict[str, Any]:
    """Parse and sanity-check state.json of a checkpoint directory."""
    path = ckpt / STATE_FILE
    if not path.is_file():
        raise LyreError(
            f"{path} is missing; the checkpoint is incomplete, delete it and use another or retrain"
        )
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LyreError(
            f"{path} is corrupt (invalid JSON); delete that checkpoint and use another or retrain"
        ) from e
    if not isinstance(header, dict) or header.get("format") != FORMAT or "files" not in header:
        raise LyreError(f"{path} is not a lyre checkpoint state file")
    if header.get("version", 0) > VERSION:
        raise LyreError(
            f"{path} was written by a newer lyre (format {header['version']}); upgrade lyre"
        )
    return header


def _load_file(ckpt: Path, header: dict[str, Any], file: str, device: str):
    path = ckpt / file
    record = header["files"].get(file)
    if record is None:
        raise LyreError(f"{ckpt} has no {file}; it was saved without it")
    _verify_file(path, record)
    return _read_safetensors(path, device)


def load_model_state(
    run_dir: Path, name: str = "last", *, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The model state_dict of a checkpoint (tied names map to the same tensor)."""
    ckpt = _resolve(run_dir, name)
    tensors, _ = _load_file(ckpt, _read_header(ckpt), MODEL_FILE, str(map_location))
    return tensors


def _check_compatible(
    expected: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], source: Path
) -> None:
    """Name the first key that differs, since torch's own error lists them all over many lines."""
    for key, tensor in expected.items():
        if key not in loaded:
            raise LyreError(
                f"{source} has no tensor '{key}'; it was saved from a different model config"
            )
        if loaded[key].shape != tensor.shape:
            raise LyreError(
                f"{source}: '{key}' has shape {tuple(loaded[key].shape)} but the model expects "
                f"{tuple(tensor.shape)}; it was saved from a different model config"
            )
    extra = [key for key in loaded if key not in expected]
    if extra:
        raise LyreError(
            f"{source} has tensor '{extra[0]}' the model lacks; it was saved from a different model config"
        )


def load_checkpoint(
    run_dir: Path,
    name: str = "last",
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load weights into `model` (strict) and state into `optimizer` if given; return `state`.

    The RNG states inside the returned dict are not applied here: the caller decides, with
    lyre.core.rng.restore_rng_state(state[...], generators), because only it knows its generators.
    """
    ckpt = _resolve(run_dir, name)
    header = _read_header(ckpt)
    if model is not None:
        weights, _ = _load_file(ckpt, header, MODEL_FILE, str(map_location))
        target = _unwrap(model)
        _check_compatible(target.state_dict(), weights, ckpt / MODEL_FILE)
        target.load_state_dict(weights, strict=True)
    if optimizer is not None:
        # Optimizer tensors stay on CPU: optimizer.load_state_dict moves them next to their
        # parameters itself, and keeps `step` where the optimizer wants it.
        tensors, meta = _load_file(ckpt, header, OPTIMIZER_FILE, "cpu")
        try:
            optimizer.load_state_dict(_unflatten(meta["optimizer"], tensors))
        except (KeyError, ValueError) as e:
            reason = first_line(e)
            raise LyreError(
                f"{ckpt / OPTIMIZER_FILE} does not fit this optimizer ({reason})"
            ) from e
    return header["state"]
