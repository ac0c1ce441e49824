"""Training: THE loop (trainer.py) and what it stands on: tasks, distributed processes,
progress and metrics, optimizers, FLOPs and MFU, loss plots.

    from lyre.train import train, Trainer, TrainResult   # the public face (trainer.py, imported on first use)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lyre.core.lazy import lazy_exports

_EXPORTS = {"train": "lyre.train.trainer", "Trainer": "lyre.train.trainer",
            "TrainResult": "lyre.train.trainer"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)  # `import lyre.train.tracking` stays light


if TYPE_CHECKING:
    from lyre.train.trainer import Trainer, TrainResult, train  # noqa: F401
