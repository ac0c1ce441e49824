"""The three entry points: import_hf, export_hf, from_pretrained (and hub downloads).

Each one first converts and checks everything in memory (configs, weights, tokenizer), and only
then touches its output, so a refused model never leaves a half-written directory.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import tempfile
from pathlib import Path

import torch

from lyre.core.errors import LyreError
from lyre.core.io import atomic_write_bytes, atomic_write_text, cache_dir, prepare_output_dir
from lyre.hf.configs import export_target, hf_config
from lyre.hf.files import (
    BIN,
    BIN_INDEX,
    SAFETENSORS,
    SAFETENSORS_INDEX,
    first_line,
    read_hf_config,
    safetensors_bytes,
)
from lyre.hf.tokenizer import (
    hf_tokenizer_files,
    import_tokenizer,
    tokenizer_for_import,
    tokenizer_spec,
)
from lyre.hf.weights import hf_to_lyre_model, lyre_to_hf_weights
from lyre.run import checkpoint as ckpt
from lyre.run.config import DataConfig, RunConfig, TrainConfig, save_config

# What a hub download fetches (pickled weights only when a repo has no safetensors).
HUB_FILES = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "vocab.json", "merges.txt", "special_tokens_map.json", "model.safetensors*",
]
# What export writes (and what --force may replace in an existing output directory).
EXPORT_FILES = [
    "config.json", "generation_config.json", SAFETENSORS, SAFETENSORS_INDEX, BIN, BIN_INDEX,
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt",
]
# What import writes (and what --force may replace in an existing run directory).
RUN_FILES = ["config.json", "tokenizer", "checkpoints", "metrics.jsonl", "loss.png"]


# ----------------------------------------------------------------------------------------------
# Import


def _clear_run(out: Path, force: bool) -> None:
    prepare_output_dir(out, holds_output=out.is_dir() and any(out.iterdir()), owned=RUN_FILES,
                       force=force, refusal=f"{out} is not empty; choose another --out or pass "
                                            "--force to replace the run in it")


def import_hf(
    src_dir: str | Path, out_run_dir: str | Path, *, tokenizer: str | None = None, force: bool = False
) -> Path:
    """Turn a Hugging Face model directory into a lyre run directory; returns its path.

    The run holds config.json, tokenizer/ and checkpoints/last (weights only, step 0), so
    `lyre sample`, evaluation and fine-tuning (train.init_from=RUN_DIR) accept it. `tokenizer`
    ("gpt2:DIR" or a lyre tokenizer directory) replaces the one in SRC, or supplies it.
    """
    src, out = Path(src_dir), Path(out_run_dir)
    # Model and tokenizer are both converted and checked before the output is touched.
    cfg, model = hf_to_lyre_model(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tok = tokenizer_for_import(src, Path(tmp) / "tokenizer", tokenizer)
        if tok.vocab_size > cfg.vocab_size:
            raise LyreError(
                f"the tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size}"
            )
        _clear_run(out, force)
        (Path(tmp) / "tokenizer").rename(out / "tokenizer")
    model_type = read_hf_config(src)["model_type"]
    state = {"step": 0, "imported_from": str(src.resolve()), "model_type": model_type}
    ckpt.save_checkpoint(out, "last", model=model, optimizer=None, state=state)
    data = DataConfig(tokenizer=tokenizer_spec(tok, out / "tokenizer"))
    save_config(RunConfig(model=cfg, data=data, train=TrainConfig()), out / "config.json")
    return out


# ----------------------------------------------------------------------------------------------
# Hub and from_pretrained


def _looks_like_repo_id(text: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text)) and not text.startswith((".", "~"))


def resolve_source(name_or_dir: str | Path, revision: str | None = None) -> Path:
    """A local directory as is; otherwise a hub repo id, downloaded (or found in the HF cache)."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _looks_like_repo_id(str(name_or_dir)):
        raise LyreError(f"{name_or_dir} is not a Hugging Face model directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise LyreError(
            f"{name_or_dir} is not a local directory and huggingface_hub is not installed"
        ) from None
    try:
        local = Path(snapshot_download(str(name_or_dir), revision=revision, allow_patterns=HUB_FILES))
        if not any(local.glob("model*.safetensors")):  # an older repo: pickled weights only
            local = Path(snapshot_download(str(name_or_dir), revision=revision,
                                           allow_patterns=[*HUB_FILES, "pytorch_model*.bin*"]))
    except Exception as e:  # no network, unknown repo, gated repo, ...
        raise LyreError(
            f"cannot get {name_or_dir!r} from the Hugging Face hub ({type(e).__name__}: "
            f"{first_line(e)}); pass a local model directory instead"
        ) from None
    return local


def _tokenizer_cache(src: Path) -> Path:
    """Tokenizers are tiny; an in-memory model keeps its own next to lyre's cache, by content."""
    digest = hashlib.sha256()
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        if (src / name).is_file():
            digest.update(name.encode() + (src / name).read_bytes())
    return cache_dir() / "tokenizers" / digest.hexdigest()[:16]


def from_pretrained(
    name_or_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    device: str | torch.device = "auto",
    revision: str | None = None,
    force: bool = False,
):
    """A Hugging Face model (hub name such as "gpt2", or a local directory) as a lyre LoadedRun.

    Hub names go through huggingface_hub.snapshot_download, then take the very same path as a
    local directory. With `run_dir`, the import is also written there as a run directory (for
    fine-tuning); without it, the model lives in memory only.
    """
    from lyre.core.devices import resolve_device
    from lyre.generate.runs import LoadedRun, load_run

    src = resolve_source(name_or_dir, revision)
    if run_dir is not None:
        import_hf(src, run_dir, force=force)
        return load_run(run_dir, "last", device)
    cfg, model = hf_to_lyre_model(src)
    tok_dir = _tokenizer_cache(src)
    tokenizer = import_tokenizer(src, tok_dir)
    config = RunConfig(model=cfg, data=DataConfig(tokenizer=tokenizer_spec(tokenizer, tok_dir)))
    device = resolve_device(str(device))
    from lyre.generate.speed import prepare_for_inference  # as load_run does: ready to generate

    return LoadedRun(src, config, tokenizer, prepare_for_inference(model.to(device)), "hf", device)


# ----------------------------------------------------------------------------------------------
# Export


def _clear_export(out: Path, force: bool) -> None:
    prepare_output_dir(out, holds_output=out.is_dir() and any(out.iterdir()), owned=EXPORT_FILES,
                       force=force, refusal=f"{out} is not empty; choose another --out or pass "
                                            "--force to overwrite")


# Exporters that live with their task's package, by run kind (RunDir.kind()); a kind not here
# exports as a causal LM. Named as "module:function" and imported when used, so that lyre.hf
# depends on no task package: they depend on it (the contracts in pyproject.toml say so).
EXPORTERS: dict[str, str] = {"classify": "lyre.classify.export:export_classifier_hf"}
PEFT_ADAPTER = "lyre.finetune.export:peft_adapter_files"  # a LoRA run's adapter, PEFT's layout
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "base")  # what PEFT_ADAPTER makes


def _exporter(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _write_peft_adapter(out: Path, adapter, force: bool) -> None:
    holds = any((out / name).exists() for name in ADAPTER_FILES)
    prepare_output_dir(out, holds_output=holds, owned=ADAPTER_FILES, force=force,
                       refusal=f"{out} already holds an adapter; pass --force to overwrite it")
    export_hf(adapter.base_dir, out / "base", checkpoint=adapter.base_checkpoint, force=True)
    atomic_write_bytes(out / "adapter_model.safetensors", adapter.weights)
    atomic_write_text(out / "adapter_config.json", json.dumps(adapter.config, indent=2) + "\n")


def export_hf(
    run_dir: str | Path, out_dir: str | Path, *, checkpoint: str = "best", force: bool = False,
    peft_adapter: str | Path | None = None,
) -> Path:
    """Write a run as a Hugging Face model directory; returns its path.

    transformers.AutoModelForCausalLM.from_pretrained(OUT) then loads it with no missing or
    unexpected keys (GPT2LMHeadModel for GPT-2-style models) and AutoTokenizer gives the ids of
    lyre's tokenizer. Models without an exact Hugging Face equivalent are refused. A LoRA run is
    exported merged; `peft_adapter` also writes its adapter in PEFT's format to that directory,
    with the base model in DIR/base (lyre.finetune.export).
    """
    from lyre.generate.runs import load_run
    from lyre.run.rundir import RunDir

    kind = RunDir(run_dir).kind()
    if kind in EXPORTERS:  # e.g. a classifier: GPT2ForSequenceClassification
        if peft_adapter is not None:
            raise LyreError(f"a {kind} run is exported with its adapters merged; drop --peft-adapter")
        return _exporter(EXPORTERS[kind])(run_dir, out_dir, checkpoint=checkpoint, force=force)
    run = load_run(run_dir, checkpoint, "cpu", for_inference=False)
    cfg = run.config.model
    model_type = export_target(cfg)
    tokenizer_files = hf_tokenizer_files(run.tokenizer, cfg.block_size)
    payload = safetensors_bytes(lyre_to_hf_weights(run.model, model_type))
    adapter = None
    if peft_adapter is not None:
        adapter = _exporter(PEFT_ADAPTER)(run_dir, peft_adapter, checkpoint)
    # Everything is ready before the output is touched.
    out = Path(out_dir)
    _clear_export(out, force)
    if adapter is not None:
        _write_peft_adapter(Path(peft_adapter), adapter, force)
    atomic_write_bytes(out / SAFETENSORS, payload)
    for name, text in tokenizer_files.items():
        atomic_write_text(out / name, text)
    eot = run.tokenizer.eot_id
    generation = {"bos_token_id": eot, "eos_token_id": eot}
    atomic_write_text(out / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    config = hf_config(cfg, model_type, eot)
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    return out
