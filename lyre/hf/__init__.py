"""Hugging Face interop: GPT-2 checkpoints in, lyre runs out, and back, with exact parity.

    import_hf(SRC, RUN_DIR)     a Hugging Face model directory -> an ordinary lyre run directory
    export_hf(RUN_DIR, OUT)     a lyre run -> a directory transformers loads with from_pretrained
    from_pretrained("gpt2")     a hub name or a local directory -> a LoadedRun (model + tokenizer)

One module per concern, read in this order:

    files.py      reading a Hugging Face directory: config.json, safetensors / .bin, shards
    configs.py    config.json <-> GPTConfig, and which architecture a lyre model exports to
    weights.py    state-dict names <-> lyre names (Conv1D transposes, fused q/k/v), the model
    tokenizer.py  GPT-2 / byte-level BPE / char tokenizers in and out
    hub.py        the entry points above, hub downloads, writing the output directories

Export picks the Hugging Face architecture that computes *exactly* what the lyre model computes:

  GPT-2 (GPT2LMHeadModel)   learned/sinusoidal/no positions + LayerNorm. Sinusoidal tables are
                            written into wpe and lyre's "no bias" becomes zero biases: the same
                            function, only trainable in transformers.
  Arcee (ArceeForCausalLM)  rotary + RMSNorm: a Llama-style decoder whose MLP is not gated.
  Starcoder2                rotary + LayerNorm (zero norm biases when lyre has none).

Llama itself is never a target: its MLP is gated (down(silu(gate(x)) * up(x))) and lyre's is
not, so no lyre model equals a Llama. Anything without an exact match is refused with the
options that block it. Tolerances are float rounding only; tests/test_hf.py proves the parity.
"""

from lyre.hf.configs import export_target, hf_to_lyre_config
from lyre.hf.files import load_hf_weights
from lyre.hf.hub import export_hf, from_pretrained, import_hf, resolve_source
from lyre.hf.tokenizer import import_tokenizer
from lyre.hf.weights import hf_to_lyre_model

__all__ = [
    "export_hf", "export_target", "from_pretrained", "hf_to_lyre_config", "hf_to_lyre_model",
    "import_hf", "import_tokenizer", "load_hf_weights", "resolve_source",
]
