"""A LoRA run's adapter in Hugging Face PEFT's format, beside its base model in transformers' format.

    export_peft_adapter(RUN, DIR)   DIR/adapter_config.json + DIR/adapter_model.safetensors (PEFT)
                                    DIR/base/ the base model (lyre.hf.export_hf of the base run)

so that, with the real `peft` package,

    base = AutoModelForCausalLM.from_pretrained("DIR/base")
    model = PeftModel.from_pretrained(base, "DIR")

computes what `lyre chat RUN` computes (tests/test_lora.py checks the logits). `lyre export-hf
RUN --out OUT` writes the merged model (adapters folded in) as any other run; `--peft-adapter
DIR` adds this. GPT-2-style models only: lyre keeps GPT-2's module names, so the adapters keep
theirs; GPT-2's projections are Conv1D layers, hence PEFT's fan_in_fan_out.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lyre.config import config_from_json
from lyre.errors import LyreError
from lyre.finetune import base as base_mod
from lyre.io import atomic_write_bytes, atomic_write_text, prepare_output_dir
from lyre.lora import peft_adapter
from lyre.model import build_model

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "base")


def export_peft_adapter(run_dir: str | Path, out_dir: str | Path, *, checkpoint: str = "best",
                        force: bool = False) -> Path:
    from safetensors.torch import save as safetensors_save

    from lyre import checkpoint as ckpt
    from lyre.hf import export_hf, export_target

    run_dir, out = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise LyreError(f"run directory {run_dir} does not exist")
    config = config_from_json(run_dir / "config.json")
    lora = config.extras.get("lora")
    if lora is None:
        raise LyreError(f"{run_dir} is not a LoRA run (no [lora] in its config); it has no adapter "
                        "to export: export the model itself with --out")
    if export_target(config.model) != "gpt2":
        raise LyreError("--peft-adapter supports GPT-2-style models (learned positions, LayerNorm); "
                        "export this run merged with --out instead")
    if checkpoint == "best" and not ckpt.checkpoint_exists(run_dir, "best"):
        checkpoint = ckpt.latest_checkpoint(run_dir) or "last"
    model = build_model(dataclasses.replace(config.model, dropout=0.0))
    base_mod.load_weights(model, run_dir, checkpoint, config, merge=False)
    tensors, adapter_config = peft_adapter(model, lora, base_model_path=str((out / "base").resolve()))
    adapter_config["fan_in_fan_out"] = True  # GPT-2's Conv1D stores weights [in, out]
    payload = safetensors_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
    ft = config.extras["finetune"]
    base_dir = base_mod.check_base(run_dir, ft)
    holds = any((out / name).exists() for name in ADAPTER_FILES)
    prepare_output_dir(out, holds_output=holds, owned=ADAPTER_FILES, force=force,
                       refusal=f"{out} already holds an adapter; pass --force to overwrite it")
    export_hf(base_dir, out / "base", checkpoint=ft.base_checkpoint, force=True)
    atomic_write_bytes(out / "adapter_model.safetensors", payload)
    atomic_write_text(out / "adapter_config.json", json.dumps(adapter_config, indent=2) + "\n")
    return out
