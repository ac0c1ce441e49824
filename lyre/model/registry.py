"""The model registry: `arch` in a config names a family registered here.

A family is a typed config dataclass plus the nn.Module it builds. What the rest of lyre needs
to know about a family (does it keep a KV cache? is it decoder-only?) is written on the model
class as class attributes, declared with their defaults in lyre.model.contract.Capabilities, so
the engine and the trainer ask the model (`capabilities(model)`), never compare names.

Adding a family: write one module with its config dataclass (fields `arch`, `vocab_size`,
`block_size` at least) and its model (the contract of lyre.model.contract), then register it:
add it to FAMILIES in lyre/model/__init__.py, or call `register_family` (a plug-in package can
do that from an entry point in the group "lyre.model_families").
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import torch.nn as nn

from lyre.core.errors import LyreError
from lyre.model.contract import Capabilities, capabilities

ENTRY_POINT_GROUP = "lyre.model_families"


@dataclass(frozen=True)
class ModelFamily:
    """One kind of model: its name (the `arch` value), config class and model class."""

    name: str
    config_class: type
    model_class: type[nn.Module]
    description: str = ""
    build: Callable[[Any], nn.Module] | None = None  # default: model_class(config)

    def make(self, config: Any) -> nn.Module:
        return (self.build or self.model_class)(config)

    @property
    def capabilities(self) -> Capabilities:
        """What its models can do (lyre.model.contract), from the model class."""
        return capabilities(self.model_class)


_FAMILIES: dict[str, ModelFamily] = {}
_plugins_loaded = False


def register_family(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    """Make `family` buildable by name. Its config class must have `arch` (defaulting to the
    family's name), `vocab_size` and `block_size` fields."""
    fields = {f.name: f for f in dataclasses.fields(family.config_class)}
    for needed in ("arch", "vocab_size", "block_size"):
        if needed not in fields:
            raise TypeError(f"{family.config_class.__name__} needs a field {needed!r}")
    if fields["arch"].default != family.name:
        raise TypeError(f"{family.config_class.__name__}.arch must default to {family.name!r}")
    if family.name in _FAMILIES and not replace and _FAMILIES[family.name] != family:
        raise ValueError(f"a model family named {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Forget a family (tests register throw-away ones)."""
    _FAMILIES.pop(name, None)


def families() -> dict[str, ModelFamily]:
    """Every registered family, by name."""
    _load_plugins()
    return dict(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    """The family registered as `name`, or a LyreError that lists the known ones."""
    known = families()
    if name in known:
        return known[name]
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise LyreError(f"unknown model.arch {name!r}{hint}; known: {', '.join(sorted(known))}")


def build_model(config: Any) -> nn.Module:
    """The model that `config` describes, built by its family (config.arch)."""
    return get_family(config.arch).make(config)


def _load_plugins() -> None:
    """Families that installed packages declare as entry points, loaded once on first use."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        family = entry.load()
        register_family(family() if callable(family) and not isinstance(family, ModelFamily) else family)
