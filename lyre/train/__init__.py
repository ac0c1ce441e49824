"""Training: THE loop (trainer.py) and what it stands on: tasks, distributed processes,
progress and metrics, optimizers, FLOPs and MFU, loss plots.

    from lyre.train import train, Trainer, TrainResult   # the public face (trainer.py, imported on first use)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_FACE = {"train": "lyre.train.trainer", "Trainer": "lyre.train.trainer",
         "TrainResult": "lyre.train.trainer"}


def __getattr__(name: str) -> Any:  # PEP 562: `import lyre.train.tracking` stays light
    if name in _FACE:
        import importlib

        return getattr(importlib.import_module(_FACE[name]), name)
    raise AttributeError(f"module 'lyre.train' has no attribute {name!r}")


if TYPE_CHECKING:
    from lyre.train.trainer import Trainer, TrainResult, train  # noqa: F401
