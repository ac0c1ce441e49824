"""Run configuration: three dataclasses, TOML presets and `--set key=value` overrides.

A preset file has up to three tables, one per dataclass:

    [model]   GPTConfig fields (n_layer, n_embd, pos, ...)
    [data]    where the tokens come from (corpus files, tokenizer spec)
    [train]   the optimisation (batch size, learning rate schedule, evaluation, device)

The presets ship inside the package, in lyre/presets/; `--config` and `load_config` take a preset
by name (`iliad-char`) or any TOML file by path (see `resolve_preset`).

Overrides name a field as `section.field` (`train.lr=3e-4`) or, when the name is unique across
the sections, as `field` alone (`lr=3e-4`). Unknown keys and values of the wrong type are errors:
a typo must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lyre.errors import LyreError
from lyre.model.gpt import GPTConfig

BUNDLED_ILIAD = Path(__file__).parent / "data_files" / "iliad.txt"
PRESETS_DIR = Path(__file__).parent / "presets"  # package data: shipped in the wheel
DEFAULT_PRESET = "iliad-char"  # what `lyre train` trains without --config (the demo)


@dataclass
class DataConfig:
    corpus: list[str] = field(default_factory=lambda: [str(BUNDLED_ILIAD)])
    tokenizer: str = "char"  # char | bpe:VOCAB | gpt2:DIR
    val_fraction: float = 0.1
    data_dir: str = ""  # a directory made by `lyre prepare`; empty: prepare into RUN_DIR/data


@dataclass
class TrainConfig:
    batch_size: int = 12
    grad_accum: int = 1  # micro-batches per optimizer step
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0: decay over max_iters
    schedule: str = "cosine"  # cosine | linear (decay to min_lr after warmup)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 250
    eval_windows: int = 64  # windows of the val split scored at each periodic eval (0: all)
    final_eval: bool = True  # score the whole val split exactly at the end
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, else fp32) | float32 | bfloat16
    compile: bool | None = None  # None: on CUDA where torch.compile works (Triton), else off
    threads: int = 0  # CPU threads for torch; 0 leaves torch's default
    init_from: str = ""  # a run directory to start from (fine-tuning); empty: random init
    optimizer: str = "adamw"  # adamw | muon (Muon on hidden matrices, AdamW on the rest)
    muon_lr: float = 0.02  # Muon's peak learning rate; follows the same warmup and decay as lr
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    # Several processes (torchrun, `lyre train --nproc N`); batch_size is per process.
    parallel: str = "ddp"  # ddp (replicas) | fsdp (weights, gradients, moments sharded)
    backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    dist_timeout: float = 1800.0  # seconds a collective waits for a silent process, then fails


@dataclass
class RunConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        unknown = set(raw) - set(SECTIONS)
        if unknown:
            raise LyreError(f"{source}: unknown section(s) {sorted(unknown)}; expected {list(SECTIONS)}")
        values = {}
        for name, section_cls in SECTIONS.items():
            values[name] = _build_section(section_cls, raw.get(name, {}), f"{source}: [{name}]")
        return cls(**values)


SECTIONS: dict[str, type] = {"model": GPTConfig, "data": DataConfig, "train": TrainConfig}


def list_presets() -> dict[str, Path]:
    """The bundled presets, name -> file, sorted by name."""
    return dict(sorted((p.stem, p) for p in PRESETS_DIR.glob("*.toml")))


def resolve_preset(name_or_path: str | Path) -> Path:
    """The TOML file that `--config name_or_path` means: an existing file wins; otherwise a bare
    name (no directory part; `.toml` optional) is a bundled preset. Anything else is a LyreError
    that lists the presets."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    presets = list_presets()
    is_name = not any(sep and sep in text for sep in ("/", os.sep, os.altsep))
    name = text.removesuffix(".toml")
    if is_name and name in presets:
        return presets[name]
    names = ", ".join(presets) or "none (is lyre installed completely?)"
    if is_name:
        what = f"no config file or preset named {text!r}"
    elif path.is_dir():
        what = f"{text} is a directory, not a TOML config file"
    else:
        what = f"config file {text} not found"
        if path.stem in presets:  # e.g. an old configs/NAME.toml path
            what += f"; did you mean the bundled preset {path.stem}?"
    raise LyreError(f"{what}; bundled presets: {names} (pass a name, or a path to a TOML file)")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML preset (a file or a bundled preset's name, see `resolve_preset`) or a run's
    config.json (or start from defaults), apply `key=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None and Path(path).suffix == ".json":
        path = Path(path)
        raw = _read_json(path)
    elif path is not None:
        path = resolve_preset(path)
        raw = _read_toml(path)
    for item in overrides or []:
        section, name, value = _parse_override(item)
        raw.setdefault(section, {})[name] = value
    return RunConfig.from_dict(raw, source=str(path) if path else "config")


def save_config(config: RunConfig, path: Path) -> None:
    from lyre.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(config.to_dict(), indent=2) + "\n")


def config_from_json(path: Path) -> RunConfig:
    return RunConfig.from_dict(_read_json(path), source=str(path))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise LyreError(f"{path} not found: is this a lyre run directory?") from None
    except json.JSONDecodeError as e:
        raise LyreError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise LyreError(f"{path} must hold a JSON object")
    return raw


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise LyreError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise LyreError(f"{path} is not valid TOML: {e}") from None


def _parse_override(item: str) -> tuple[str, str, Any]:
    """`train.lr=3e-4` or `lr=3e-4` -> ("train", "lr", 3e-4); the value is read as TOML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise LyreError(f"override {item!r} must look like key=value (e.g. train.lr=3e-4)")
    section, name = _resolve_key(key.strip())
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word such as `pos=rope` is a string
    return section, name, value


def _resolve_key(key: str) -> tuple[str, str]:
    if "." in key:
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise LyreError(f"unknown config section {section!r} in {key!r}; expected {list(SECTIONS)}")
        if name not in _field_names(SECTIONS[section]):
            raise LyreError(f"unknown config key {key!r}")
        return section, name
    owners = [s for s, cls in SECTIONS.items() if key in _field_names(cls)]
    if not owners:
        raise LyreError(f"unknown config key {key!r}")
    if len(owners) > 1:
        raise LyreError(f"config key {key!r} is ambiguous: write one of {[f'{s}.{key}' for s in owners]}")
    return owners[0], key


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _build_section(cls: type, raw: dict[str, Any], where: str):
    if not isinstance(raw, dict):
        raise LyreError(f"{where} must be a table of key = value pairs")
    hints = typing.get_type_hints(cls)
    unknown = set(raw) - _field_names(cls)
    if unknown:
        raise LyreError(f"{where}: unknown key(s) {sorted(unknown)}")
    values = {name: _coerce(value, hints[name], f"{where} {name}") for name, value in raw.items()}
    return cls(**values)


def _coerce(value: Any, expected: Any, where: str) -> Any:
    """Check `value` against the field's type; ints are accepted where floats are expected."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(expected) if o is not type(None)]
        if value is not None and len(options) == 1:  # X | None: a value gets X's own message
            return _coerce(value, options[0], where)
        for option in typing.get_args(expected):
            try:
                return _coerce(value, option, where)
            except LyreError:
                continue
        raise LyreError(f"{where}: {value!r} is not a {expected}")
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise LyreError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_type, where) for v in value]
    if expected is type(None):
        if value is None:
            return None
        raise LyreError(f"{where}: expected nothing, got {value!r}")
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool and not isinstance(value, bool):
        raise LyreError(f"{where}: expected true or false, got {value!r}")
    if expected is int and isinstance(value, bool):
        raise LyreError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, expected):
        raise LyreError(f"{where}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value
