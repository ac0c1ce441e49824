"""Hugging Face interop verbs: `import-hf` and `export-hf` (lyre.hf)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    _add_import_hf(sub)
    _add_export_hf(sub)


def _add_import_hf(sub) -> None:
    p = sub.add_parser("import-hf", help="turn a Hugging Face GPT-2 model into a lyre run",
                       description="Import a Hugging Face model directory (config.json, model.safetensors or "
                                   "pytorch_model.bin, tokenizer files) or hub name as a lyre run directory.")
    p.add_argument("src", help="Hugging Face model directory, or a hub name such as gpt2 (needs network)")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--tokenizer", help="use this tokenizer instead of SRC's: gpt2:DIR or a lyre tokenizer directory")
    p.add_argument("--force", action="store_true", help="replace the run in a non-empty --out")
    p.set_defaults(func=cmd_import_hf)


def _add_export_hf(sub) -> None:
    p = sub.add_parser("export-hf", help="write a run as a Hugging Face model directory",
                       description="Export a run so transformers' from_pretrained loads it (GPT-2, or the "
                                   "exact Hugging Face equivalent of rotary models); refuses what has none.")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("--out", type=Path, required=True, help="directory to write")
    p.add_argument("--checkpoint", default="best", help="best or last (default best)")
    p.add_argument("--force", action="store_true", help="overwrite the model files in a non-empty --out")
    p.add_argument("--peft-adapter", type=Path, metavar="DIR",
                   help="LoRA runs: also write the adapter in PEFT's format to DIR, with its base model "
                        "in DIR/base (PeftModel.from_pretrained(base, DIR)); --out gets the merged model")
    p.set_defaults(func=cmd_export_hf)


def cmd_import_hf(args) -> None:
    from lyre.hf import import_hf, resolve_source

    run_dir = import_hf(resolve_source(args.src), args.out, tokenizer=args.tokenizer, force=args.force)
    print(f"wrote {run_dir}: sample it with `lyre sample {run_dir}`; fine-tune it with "
          f"`lyre train --set train.init_from={run_dir}` on data tokenized by {run_dir}/tokenizer "
          f"(see docs/hf.md)")


def cmd_export_hf(args) -> None:
    from lyre.hf import export_hf
    from lyre.run.rundir import RunDir

    out = export_hf(args.run_dir, args.out, checkpoint=args.checkpoint, force=args.force,
                    peft_adapter=args.peft_adapter)
    auto = "AutoModelForSequenceClassification" if RunDir(args.run_dir).kind() == "classify" else "AutoModelForCausalLM"
    print(f"wrote {out}: load it with transformers.{auto}.from_pretrained({str(out)!r})")
    if args.peft_adapter:
        adapter = args.peft_adapter
        print(f"wrote {adapter}: peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("
              f"{str(adapter / 'base')!r}), {str(adapter)!r})")
