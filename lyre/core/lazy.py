"""A package's public face, imported on first use (PEP 562).

`import lyre` (or lyre.rag, lyre.train ...) must stay cheap: `lyre --help` should not pay the
second torch takes to import. So a package lists its public names and the module that defines
each, and the module is imported only when a name is first asked for:

    _EXPORTS = {"train": "lyre.train.trainer", ...}
    __all__ = sorted(_EXPORTS)
    __getattr__ = lazy_exports(__name__, _EXPORTS)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The module-level __getattr__ of `package`: public name -> its defining module's attribute."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
