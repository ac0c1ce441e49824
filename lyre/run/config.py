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
import difflib
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lyre.classify.config import ClassifyConfig
from lyre.core.errors import LyreError
from lyre.core.io import read_json_object, write_json
from lyre.finetune.config import FinetuneConfig
from lyre.finetune.lora_config import LoRAConfig
from lyre.model import GPTConfig, get_family

BUNDLED_ILIAD = Path(__file__).parents[1] / "data_files" / "iliad.txt"
PRESETS_DIR = Path(__file__).parents[1] / "presets"  # package data: shipped in the wheel
DEFAULT_PRESET = "iliad-char"  # what `lyre train` trains without --config (the demo)


@dataclass
class DataConfig:
    corpus: list[str] = field(default_factory=lambda: [str(BUNDLED_ILIAD)])
    tokenizer: str = "char"  # char | bpe:VOCAB | gpt2:DIR
    val_fraction: float = 0.1
    data_dir: str = ""  # a directory made by `lyre prepare`; empty: prepare into RUN_DIR/data
    align: str = "none"  # none | document: training windows start anywhere, or at a document's BOS
    order: str = "random"  # random | sequential: windows drawn at random, or one pass after another


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
    # `last` is also saved between evaluations, so a killed run loses at most this much work
    # (0 turns either off): every N steps, and every M minutes of training.
    checkpoint_interval: int = 0
    checkpoint_minutes: float = 5.0
    tensorboard: bool = False  # also write TensorBoard event files to RUN_DIR/tensorboard
    wandb: bool = False  # also log to Weights & Biases (offline unless WANDB_MODE says otherwise)
    wandb_project: str = "lyre"
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
    """Everything a run needs. `model` is the config dataclass of the family that
    `model.arch` names (lyre.model.registry); GPTConfig by default.

    Beyond the three sections, a run may carry the optional ones of OPTIONAL_SECTIONS
    (fine-tuning, adapters, a classification head), and a `chat_template`: the name of the
    template (lyre.chat.templates) that `lyre chat` and `lyre serve` use for this run.
    """

    model: Any = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    chat_template: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # registered optional sections

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        if self.chat_template:
            out["chat_template"] = self.chat_template
        for name, section in self.extras.items():
            out[name] = dataclasses.asdict(section)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        known = [*SECTIONS, *TOP_LEVEL, *OPTIONAL_SECTIONS]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise LyreError(f"{source}: unknown key(s) {unknown}{_did_you_mean(unknown[0], known)}; "
                            f"expected {known}")
        sections = section_classes(raw)
        values: dict[str, Any] = {
            name: _build_section(sections[name], raw.get(name, {}), f"{source}: [{name}]")
            for name in SECTIONS
        }
        template = raw.get("chat_template")
        if template is not None and not (isinstance(template, str) and template):
            raise LyreError(f"{source}: chat_template must be a template name; got {template!r}")
        extras = {
            name: _build_section(OPTIONAL_SECTIONS[name], raw[name], f"{source}: [{name}]")
            for name in OPTIONAL_SECTIONS if name in raw
        }
        return cls(**values, chat_template=template, extras=extras)

    @property
    def kind(self) -> str:
        """What the run is, one word of RUN_KINDS: its fine-tuning task (sft, dpo, classify)
        when it has a [finetune] section, else what its model family trains on (lm, seq2seq)."""
        if "classify" in self.extras:  # a head on a base: classifier runs made by any path
            return "classify"
        finetune = self.extras.get("finetune")
        if finetune is not None:
            return finetune.task
        return "lm" if get_family(self.model.arch).capabilities.decoder_only else "seq2seq"

    @property
    def uses_lora(self) -> bool:
        """LoRA adapters: the run's checkpoints hold them alone, its base holds the weights."""
        return "lora" in self.extras


SECTIONS: dict[str, type] = {"model": GPTConfig, "data": DataConfig, "train": TrainConfig}
TOP_LEVEL = ("chat_template",)
# The sections a run may carry besides the three: declared here, not registered as a side effect
# of importing their stage, so any process reads any run's config.json. Each dataclass lives in a
# torch-free module of its stage (nothing there imports lyre.run.config back).
OPTIONAL_SECTIONS: dict[str, type] = {
    "finetune": FinetuneConfig,  # sft, dpo and classify runs: the task, data, base pointer
    "lora": LoRAConfig,  # adapters instead of full weights
    "classify": ClassifyConfig,  # a classifier's labels and head
}
# What `RunConfig.kind` (and RunDir.kind()) answers: the task that trained the run.
RUN_KINDS = ("lm", "seq2seq", "sft", "dpo", "classify")


def section_classes(raw: dict[str, Any]) -> dict[str, type]:
    """The dataclass of each section; the model's comes from the family `model.arch` names.
    Optional sections the config carries count too, so `--set` reaches their fields."""
    model = raw.get("model", {})
    arch = model.get("arch", "gpt") if isinstance(model, dict) else "gpt"
    present = {name: cls for name, cls in OPTIONAL_SECTIONS.items() if name in raw}
    return {**SECTIONS, "model": get_family(arch).config_class, **present}


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
    config.json (or start from defaults), apply `key=value` overrides.

    An override that changes `model.arch` switches the model section to that family's config:
    the preset's model fields that the new family lacks are dropped (fields it shares, such as
    block_size, are kept). An override the family does not know is an error that names the
    command line, not the preset file.
    """
    raw: dict[str, Any] = {}
    if path is not None and Path(path).suffix == ".json":
        path = Path(path)
        raw = read_json_object(path, "is this a lyre run directory?")
    elif path is not None:
        path = resolve_preset(path)
        raw = _read_toml(path)
    source = str(path) if path else "config"
    parsed = [_parse_override(item) for item in overrides or []]
    arch = [value for key, value in parsed if key in ("arch", "model.arch")]
    if arch:
        model = raw.setdefault("model", {})
        if isinstance(model, dict) and model.get("arch", "gpt") != arch[-1]:
            keep = {f.name for f in dataclasses.fields(get_family(str(arch[-1])).config_class)}
            raw["model"] = {k: v for k, v in model.items() if k in keep}
        raw["model"]["arch"] = arch[-1]
    try:  # the file on its own must be valid: its errors name the file
        RunConfig.from_dict(raw, source=source)
    except LyreError:
        if not parsed:
            raise
        # ...unless the overrides fix it; checked again below with them applied
    for key, value in parsed:
        classes = section_classes(raw)
        section, name = _resolve_key(key, classes)
        hint = typing.get_type_hints(classes[section])[name]
        raw.setdefault(section, {})[name] = _coerce(value, hint, f"--set {key}")
    if not parsed:
        return RunConfig.from_dict(raw, source=source)
    try:
        return RunConfig.from_dict(raw, source=source)
    except LyreError as e:
        flags = " ".join(f"--set {item}" for item in overrides or [])
        raise LyreError(f"{e} (with {flags})") from None


def save_config(config: RunConfig, path: Path) -> None:
    write_json(path, config.to_dict())


def config_from_json(path: Path) -> RunConfig:
    return RunConfig.from_dict(read_json_object(path, "is this a lyre run directory?"), source=str(path))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise LyreError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise LyreError(f"{path} is not valid TOML: {e}") from None


def _parse_override(item: str) -> tuple[str, Any]:
    """`train.lr=3e-4` -> ("train.lr", 3e-4); the value is read as TOML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise LyreError(f"--set {item!r} must look like key=value (e.g. train.lr=3e-4)")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word such as `pos=rope` is a string
    return key.strip(), value


def _resolve_key(key: str, sections: dict[str, type]) -> tuple[str, str]:
    """`train.lr` or `lr` -> ("train", "lr"); unknown keys get the closest known one suggested."""
    everything = [f"{s}.{n}" for s, cls in sections.items() for n in sorted(_field_names(cls))]
    if "." in key:
        section, _, name = key.partition(".")
        if section not in sections:
            raise LyreError(f"--set {key}: unknown config section {section!r}"
                            f"{_did_you_mean(section, sections)}; expected {list(sections)}")
        if name not in _field_names(sections[section]):
            raise LyreError(f"--set {key}: unknown config key{_did_you_mean(key, everything)}")
        return section, name
    owners = [s for s, cls in sections.items() if key in _field_names(cls)]
    if not owners:
        names = [n.partition(".")[2] for n in everything]
        raise LyreError(f"--set {key}: unknown config key{_did_you_mean(key, names)}")
    if len(owners) > 1:
        raise LyreError(f"--set {key}: ambiguous, write one of {[f'{s}.{key}' for s in owners]}")
    return owners[0], key


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _build_section(cls: type, raw: dict[str, Any], where: str):
    if not isinstance(raw, dict):
        raise LyreError(f"{where} must be a table of key = value pairs")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - _field_names(cls))
    if unknown:
        raise LyreError(f"{where}: unknown key(s) {unknown}{_did_you_mean(unknown[0], _field_names(cls))}")
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
