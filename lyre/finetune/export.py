"""A LoRA run's adapter in Hugging Face PEFT's format (what `lyre export-hf --peft-adapter DIR` writes).

    DIR/adapter_config.json + DIR/adapter_model.safetensors    the adapter, PEFT's layout
    DIR/base/                                                  the base model (export_hf of the base run)

adapter_config.json's base_model_name_or_path is "base", the base's place relative to DIR (no
absolute path of the machine that exported it).

so that, with the real `peft` package,

    base = AutoModelForCausalLM.from_pretrained("DIR/base")
    model = PeftModel.from_pretrained(base, "DIR")

computes what `lyre chat RUN` computes (tests/test_lora.py checks the logits). The merged model
(adapters folded in) is what `lyre export-hf RUN --out OUT` writes for any run. GPT-2-style
models only: lyre keeps GPT-2's module names, so the adapters keep theirs; GPT-2's projections
are Conv1D layers, hence PEFT's fan_in_fan_out. lyre.hf.hub.export_hf calls `peft_adapter_files`
and writes the files; this module never writes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lyre.core.errors import LyreError
from lyre.finetune import base as base_mod
from lyre.finetune.lora import peft_adapter
from lyre.hf.configs import export_target
from lyre.model import build_model
from lyre.run import checkpoint as ckpt
from lyre.run.rundir import RunDir


@dataclass
class PeftAdapter:
    weights: bytes  # adapter_model.safetensors
    config: dict[str, Any]  # adapter_config.json
    base_dir: Path  # the base run, to export into DIR/base
    base_checkpoint: str


def peft_adapter_files(run_dir: str | Path, out_dir: str | Path, checkpoint: str = "best") -> PeftAdapter:
    """The adapter of a LoRA run as PEFT stores it, checked and serialized (nothing written)."""
    from safetensors.torch import save as safetensors_save

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LyreError(f"run directory {run_dir} does not exist")
    config = RunDir(run_dir).read_config()
    lora = config.extras.get("lora")
    if lora is None:
        raise LyreError(f"{run_dir} is not a LoRA run (no [lora] in its config), so it has no adapter "
                        "to export; drop --peft-adapter")
    if export_target(config.model) != "gpt2":
        raise LyreError("--peft-adapter supports GPT-2-style models (learned positions, LayerNorm); "
                        "export this run merged, without --peft-adapter")
    if checkpoint == "best" and not ckpt.checkpoint_exists(run_dir, "best"):
        checkpoint = ckpt.latest_checkpoint(run_dir) or "last"
    model = build_model(dataclasses.replace(config.model, dropout=0.0))
    base_mod.load_weights(model, run_dir, checkpoint, config, merge=False)
    # Portable, as PEFT's own files are (a hub name, not this machine's path): the base sits in
    # the adapter directory's `base/`, so the pair can be copied anywhere together.
    tensors, adapter_config = peft_adapter(model, lora, base_model_path="base")
    adapter_config["fan_in_fan_out"] = True  # GPT-2's Conv1D stores weights [in, out]
    weights = safetensors_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
    ft = config.extras["finetune"]
    return PeftAdapter(weights, adapter_config, base_mod.check_base(run_dir, ft), ft.base_checkpoint)
