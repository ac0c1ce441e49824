"""Export a classifier to Hugging Face: `lyre export-hf RUN --out DIR` on a classifier run.

The directory loads with `transformers.GPT2ForSequenceClassification.from_pretrained(DIR)` (or
AutoModelForSequenceClassification) and gives the same logits as lyre, with the label names
in config.id2label. That class is GPT-2 plus `score`, a Linear layer without bias over the
final hidden states (lyre's head is the same), and it reads the hidden state of the last token
that is not `pad_token_id` in each row, so:

  * the base must be GPT-2-shaped (lyre.hf.configs.export_target says "gpt2": learned,
    sinusoidal or no positions, LayerNorm);
  * the pooling must be last_nonpad, and pad_token_id is the run's padding id, the
    tokenizer's <|endoftext|>, which plain text never produces. (A character tokenizer has
    no such token: padding is id 0, an ordinary character, and a text that ends with that
    character would be read one token early by transformers.)

A LoRA classifier is exported with its adapters merged into the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from lyre.classify.build import load_classifier_model
from lyre.core.errors import LyreError
from lyre.core.io import atomic_write_bytes, atomic_write_text, prepare_output_dir
from lyre.hf.configs import export_target, hf_config
from lyre.hf.files import SAFETENSORS, safetensors_bytes
from lyre.hf.tokenizer import hf_tokenizer_files
from lyre.hf.weights import lyre_to_hf_weights
from lyre.tokenizers import load_tokenizer
from lyre.tokenizers.base import EOT

EXPORT_FILES = ("config.json", SAFETENSORS, "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.json", "merges.txt")


def export_classifier_hf(run_dir: str | Path, out_dir: str | Path, *, checkpoint: str = "best",
                         force: bool = False) -> Path:
    """Write classifier run RUN_DIR as a GPT2ForSequenceClassification directory; returns it."""
    run_dir = Path(run_dir)
    config, model, _ = load_classifier_model(run_dir, checkpoint, "cpu")
    cls = config.extras["classify"]
    model_type = export_target(config.model)
    if model_type != "gpt2":
        m = config.model
        raise LyreError(f"cannot export this classifier: its base (pos={m.pos}, norm={m.norm}) is a "
                        f"{model_type} model in Hugging Face's terms, and a classifier is exported as "
                        "GPT2ForSequenceClassification, which needs a GPT-2-shaped base (learned or "
                        "sinusoidal positions, LayerNorm)")
    if cls.pooling != "last_nonpad":
        raise LyreError(f"cannot export a classifier with pooling={cls.pooling}: "
                        "GPT2ForSequenceClassification reads the last non-padding token "
                        "(pooling=last_nonpad)")
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    tensors = lyre_to_hf_weights(model.base, "gpt2")
    tensors.pop("lm_head.weight", None)  # the classifier has `score` instead of an LM head
    tensors["score.weight"] = model.head.weight
    payload = safetensors_bytes(tensors)
    files = hf_tokenizer_files(tokenizer, config.model.block_size)
    tok_config = json.loads(files["tokenizer_config.json"])
    if tokenizer.eot_id is not None:
        tok_config["pad_token"] = EOT  # batches padded by the tokenizer pad as lyre does
    files["tokenizer_config.json"] = json.dumps(tok_config, indent=2)
    hf = hf_config(config.model, "gpt2", tokenizer.eot_id)
    hf.update({
        "architectures": ["GPT2ForSequenceClassification"],
        "id2label": {str(i): name for i, name in enumerate(cls.labels)},
        "label2id": {name: i for i, name in enumerate(cls.labels)},
        "pad_token_id": cls.pad_id,
        "problem_type": "single_label_classification",
    })
    out = Path(out_dir)  # everything is ready before the output is touched
    prepare_output_dir(out, holds_output=out.is_dir() and any(out.iterdir()), owned=EXPORT_FILES,
                       force=force, refusal=f"{out} is not empty; choose another --out or pass "
                                            "--force to overwrite")
    atomic_write_bytes(out / SAFETENSORS, payload)
    for name, text in files.items():
        atomic_write_text(out / name, text)
    atomic_write_text(out / "config.json", json.dumps(hf, indent=2) + "\n")
    return out
