"""The `[lora]` section of a fine-tuned run: the shape of its adapters (torch-free).

Kept apart from lyre.finetune.lora (the adapters themselves, which need torch) so that lyre.run.config can
declare the section without importing torch's layers; lyre.finetune.lora re-exports LoRAConfig.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lyre.core.errors import LyreError

DEFAULT_TARGETS = ["attn", "mlp"]


@dataclass
class LoRAConfig:
    """The `[lora]` section of a fine-tuned run: the shape of its adapters."""

    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input only
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def validate(self) -> None:
        if self.rank < 1:
            raise LyreError(f"lora.rank must be at least 1; got {self.rank}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise LyreError(f"lora.alpha must be a positive number; got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise LyreError(f"lora.dropout must be in [0, 1); got {self.dropout}")
        if not self.targets:
            raise LyreError("lora.targets is empty; name modules such as attn, mlp or c_attn")
