"""lyre: build your own GPT from scratch and take it all the way to a working assistant.

The public API, one import away:

    from lyre import GPT, GPTConfig, RunConfig, load_config, load_tokenizer, train, generate
"""

from lyre.config import DataConfig, RunConfig, TrainConfig, load_config
from lyre.engine import Completion, Engine
from lyre.errors import LyreError
from lyre.evaluate import evaluate_run, evaluate_text
from lyre.generate import SamplingConfig, generate, stream
from lyre.hf import export_hf, from_pretrained, import_hf
from lyre.model import GPT, BigramLM, GPTConfig, build_model
from lyre.runs import load_run
from lyre.tokenizers import build_tokenizer, load_tokenizer
from lyre.train import TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "GPT", "GPTConfig", "BigramLM", "build_model", "RunConfig", "DataConfig", "TrainConfig",
    "load_config", "LyreError", "SamplingConfig", "generate", "stream", "load_run",
    "build_tokenizer", "load_tokenizer", "TrainResult", "train",
    "from_pretrained", "import_hf", "export_hf", "Engine", "Completion", "evaluate_run",
    "evaluate_text",
]
