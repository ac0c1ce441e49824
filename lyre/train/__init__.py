"""Training: THE loop (trainer.py) and what it stands on: checkpoints, distributed processes,
progress and metrics, optimizers, FLOPs and MFU, loss plots.

    from lyre.train.trainer import train, Trainer, TrainResult   # the public face (imported on first use)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_FACE = {"train": "lyre.train.trainer.trainer", "Trainer": "lyre.train.trainer.trainer",
         "TrainResult": "lyre.train.trainer.trainer"}


def __getattr__(name: str) -> Any:  # PEP 562: `import lyre.train.trainer.checkpoint` stays light
    if name in _FACE:
        import importlib

        return getattr(importlib.import_module(_FACE[name]), name)
    raise AttributeError(f"module 'lyre.train.trainer' has no attribute {name!r}")


if TYPE_CHECKING:
    from lyre.train.trainer.trainer import Trainer, TrainResult, train  # noqa: F401
