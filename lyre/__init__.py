"""lyre: build your own GPT from scratch and take it all the way to a working assistant.

The public API, one import away:

    from lyre import GPT, GPTConfig, RunConfig, load_config, load_run, SamplingConfig
    from lyre.train import train                  # the packages' faces: lyre.train.trainer.train
    from lyre.generate import generate            # and lyre.generate.simple.generate

The names below are imported on first use (PEP 562), not with the package: `import lyre` stays
cheap, so a command that needs no torch (`lyre --help`, `lyre rag index`) does not pay the
second torch takes to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lyre.core.lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "DataConfig": "lyre.run.config", "RunConfig": "lyre.run.config", "TrainConfig": "lyre.run.config",
    "load_config": "lyre.run.config",
    "Completion": "lyre.engine", "Engine": "lyre.engine",
    "Constraint": "lyre.constrain", "ConstraintError": "lyre.constrain",
    "LyreError": "lyre.core.errors",
    "evaluate_run": "lyre.eval.loss", "evaluate_text": "lyre.eval.loss",
    "evaluate_task": "lyre.eval.harness",
    "SamplingConfig": "lyre.generate.simple",
    "export_hf": "lyre.hf", "from_pretrained": "lyre.hf", "import_hf": "lyre.hf",
    "GPT": "lyre.model", "BigramLM": "lyre.model", "GPTConfig": "lyre.model",
    "build_model": "lyre.model",
    "load_run": "lyre.generate.runs",
    "build_tokenizer": "lyre.tokenizers", "load_tokenizer": "lyre.tokenizers",
    "Trainer": "lyre.train.trainer", "TrainResult": "lyre.train.trainer",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and editors see (names used through __all__)
    from lyre.constrain import Constraint, ConstraintError  # noqa: F401
    from lyre.core.errors import LyreError  # noqa: F401
    from lyre.engine import Completion, Engine  # noqa: F401
    from lyre.eval.harness import evaluate_task  # noqa: F401
    from lyre.eval.loss import evaluate_run, evaluate_text  # noqa: F401
    from lyre.generate.runs import load_run  # noqa: F401
    from lyre.generate.simple import SamplingConfig  # noqa: F401
    from lyre.hf import export_hf, from_pretrained, import_hf  # noqa: F401
    from lyre.model import GPT, BigramLM, GPTConfig, build_model  # noqa: F401
    from lyre.run.config import DataConfig, RunConfig, TrainConfig, load_config  # noqa: F401
    from lyre.tokenizers import build_tokenizer, load_tokenizer  # noqa: F401
    from lyre.train.trainer import Trainer, TrainResult  # noqa: F401
