"""Using a trained run: load it (runs.py: config + tokenizer + weights), make the CPU faster
where asked (speed.py), and the simple entry points over the engine (simple.py).

    from lyre.generate import generate, stream, SamplingConfig, Constraint  # the face (simple.py)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_FACE = {"generate": "lyre.generate.simple", "stream": "lyre.generate.simple",
         "SamplingConfig": "lyre.generate.simple", "Constraint": "lyre.generate.simple"}


def __getattr__(name: str) -> Any:  # PEP 562: `import lyre.generate.runs` stays light
    if name in _FACE:
        import importlib

        return getattr(importlib.import_module(_FACE[name]), name)
    raise AttributeError(f"module 'lyre.generate' has no attribute {name!r}")


if TYPE_CHECKING:
    from lyre.generate.simple import Constraint, SamplingConfig, generate, stream  # noqa: F401
