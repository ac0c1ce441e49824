"""lyre: build your own GPT from scratch and take it all the way to a working assistant.

The public API, one import away:

    from lyre import GPT, GPTConfig, RunConfig, load_config, load_run, SamplingConfig
    from lyre.train import train          # lyre.train and lyre.generate are modules;
    from lyre.generate import generate    # their main functions live inside them
"""

from lyre.config import DataConfig, RunConfig, TrainConfig, load_config
from lyre.engine import Completion, Engine
from lyre.errors import LyreError
from lyre.evaluate import evaluate_run, evaluate_text
from lyre.generate import SamplingConfig
from lyre.hf import export_hf, from_pretrained, import_hf
from lyre.model import GPT, BigramLM, GPTConfig, build_model
from lyre.runs import load_run
from lyre.tokenizers import build_tokenizer, load_tokenizer
from lyre.train import Trainer, TrainResult

__version__ = "0.1.0"

__all__ = [
    "GPT", "GPTConfig", "BigramLM", "build_model", "RunConfig", "DataConfig", "TrainConfig",
    "load_config", "LyreError", "SamplingConfig", "load_run",
    "build_tokenizer", "load_tokenizer", "TrainResult", "Trainer",
    "from_pretrained", "import_hf", "export_hf", "Engine", "Completion", "evaluate_run",
    "evaluate_text",
]
