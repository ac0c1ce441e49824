"""Using a trained run: load it (runs.py: config + tokenizer + weights), make the CPU faster
where asked (speed.py), and the simple entry points over the engine (simple.py).

    from lyre.generate import generate, stream, SamplingConfig, Constraint  # the face (simple.py)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lyre.core.lazy import lazy_exports

_EXPORTS = {"generate": "lyre.generate.simple", "stream": "lyre.generate.simple",
            "SamplingConfig": "lyre.generate.simple", "Constraint": "lyre.generate.simple"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)  # `import lyre.generate.runs` stays light


if TYPE_CHECKING:
    from lyre.generate.simple import Constraint, SamplingConfig, generate, stream  # noqa: F401
