"""Verbs of the first stage: tokenize a corpus, train, and look at a config or a run
(`prepare`, `train`, `info`, `presets`, `plot`)."""

from __future__ import annotations

import sys
from pathlib import Path

from lyre.cli.finetune import cmd_finetune
from lyre.core.errors import LyreError
from lyre.core.ranks import is_main_process


def register(sub) -> None:
    _add_prepare(sub)
    _add_train(sub)
    _add_info(sub)
    _add_presets(sub)
    _add_plot(sub)


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare", help="tokenize a corpus into token shards for training",
        description="Tokenize files, folders and globs of text (.txt, .jsonl, .json, .parquet, "
                    "optionally .gz or .zst) into fixed-size token shards and a manifest.json, "
                    "in parallel. Documents are separated by <|endoftext|> and split into "
                    "train/val by a seeded hash of their content (a corpus of fewer than 10 "
                    "documents: each gives its tail to val). An interrupted run continues where "
                    "it stopped; a re-run on the same inputs and options does nothing.",
        epilog="Train on the result with: lyre train --config PRESET --set data.data_dir=OUT")
    p.add_argument("corpus", nargs="+", metavar="INPUT",
                   help="files, folders (every file below) or quoted globs ('data/*.jsonl.zst')")
    p.add_argument("--tokenizer", default="char",
                   help="char | bpe:VOCAB_SIZE (learned from a sample of the corpus) | gpt2:DIR "
                        "(encoder.json + vocab.bpe, run by tiktoken) | a saved tokenizer "
                        "directory (RUN_DIR/tokenizer) (default char)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--workers", type=int, metavar="N",
                   help="tokenizing processes (default: the CPU count; small corpora in-process)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N",
                   help="tokens per shard file (default 100,000,000: 200 MB of uint16)")
    p.add_argument("--text-field", default="text",
                   help="the field (JSONL/JSON) or column (parquet) holding the text (default text)")
    p.add_argument("--split-blank-lines", action="store_true",
                   help=".txt files: one document per paragraph (blank-line separated) instead "
                        "of one per file")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of documents kept for validation (default 0.1)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val split (default 1337)")
    p.add_argument("--dedup", action="store_true",
                   help="drop exact duplicate documents (by a hash of their text), counted")
    bad = p.add_mutually_exclusive_group()
    bad.add_argument("--skip-bad", action="store_true",
                     help="skip unreadable, binary, non-UTF-8 or corrupt compressed files "
                          "(counted, with reasons) instead of stopping")
    bad.add_argument("--strict", action="store_true",
                     help="stop at the first record without the text field or with invalid JSON "
                          "(default: skip and count them, with line numbers)")
    p.add_argument("--force", action="store_true",
                   help="replace an output directory prepared from other inputs or options")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_prepare)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a TOML preset",
                       description="Train a model from a preset (`lyre presets` lists the bundled ones) "
                                   "or any TOML file; every field can be overridden.")
    p.add_argument("--config", metavar="PRESET",
                   help="a bundled preset's name (e.g. iliad-char) or a TOML file's path "
                        "(default: the demo preset iliad-char)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=3e-4 --set n_layer=6 (repeatable)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite a run directory that holds another run")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: one plain line per log interval (also when the output "
                        "is not a terminal)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files to RUN_DIR/tensorboard (train.tensorboard)")
    p.add_argument("--wandb", action="store_true",
                   help="also log to Weights & Biases, offline unless WANDB_MODE says otherwise "
                        "(train.wandb)")
    p.add_argument("--nproc", type=int, default=0, metavar="N",
                   help="train on N processes of this machine, started by torchrun (one per GPU on CUDA; "
                        "batch_size is per process); several machines: see docs/distributed.md")
    p.set_defaults(func=cmd_train)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="parameters, memory and FLOPs of a model config",
                       description="Print parameters, memory and FLOPs per token of a model config.")
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="a preset's name, a TOML file or a RUN_DIR (default: GPT-2 124M)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set n_layer=96 --set n_embd=12288")
    p.set_defaults(func=cmd_info)


def _add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the bundled presets (names for --config)",
                       description="List the bundled presets: `lyre train --config NAME` trains one.")
    p.set_defaults(func=cmd_presets)


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw the loss curves of a run",
                       description="Draw train/val loss curves from RUN_DIR/metrics.jsonl into a PNG.")
    p.add_argument("run_dir", type=Path, help="run directory (reads RUN_DIR/metrics.jsonl)")
    p.add_argument("--out", type=Path, help="image path, .png, .svg or .pdf (default RUN_DIR/loss.png)")
    p.set_defaults(func=cmd_plot)


def cmd_prepare(args) -> None:
    import json

    from lyre.data.prepare import PrepareOptions, prepare_corpus

    options = PrepareOptions(
        tokenizer=args.tokenizer, val_fraction=args.val_fraction, seed=args.seed,
        workers=args.workers, shard_tokens=args.shard_tokens, text_field=args.text_field,
        split_blank_lines=args.split_blank_lines, dedup=args.dedup, skip_bad=args.skip_bad,
        strict=args.strict, force=args.force, progress=not args.json)
    result = prepare_corpus(args.corpus, args.out, options)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
        return
    if result.up_to_date:
        print(f"{args.out} is up to date ({summary['tokens']:,} tokens); nothing to do")
        return
    skipped = sum(summary["skipped"].values())
    print(f"wrote {args.out}: {summary['documents']:,} documents, {summary['train_tokens']:,} train "
          f"and {summary['val_tokens']:,} val tokens in {summary['shards']} shard(s), vocab "
          f"{summary['vocab_size']:,} ({summary['dtype']}), split by {summary['split']}"
          + (f", {summary['duplicates']:,} duplicates dropped" if args.dedup else "")
          + (f", {skipped:,} records skipped" if skipped else "")
          + (" (resumed)" if result.resumed else ""))
    for reason, count in summary["skipped"].items():
        where = ", ".join(summary["skipped_where"].get(reason, []))
        print(f"  skipped {count:,}: {reason} (e.g. {where})")
    for path, reason in summary["files_skipped"].items():
        print(f"  skipped file {path}: {reason}")
    for note in result.notes:
        print(f"  note: {note}")


def cmd_train(args) -> None:
    from lyre.run.config import load_config, resolve_preset
    from lyre.run.rundir import RunDir
    from lyre.train.trainer import train

    args.overrides += [f"train.{name}=true" for name in ("tensorboard", "wandb") if getattr(args, name)]
    if args.resume and RunDir(args.resume).kind() not in ("lm", "seq2seq"):
        # A fine-tuned run (the trainer's resume hint names `lyre train`): its own driver.
        args.base = args.data = args.out = args.template = args.lora_rank = args.task = None
        cmd_finetune(args)
        return
    if args.resume:
        # The run's own config is the base; a second one would be silently ignored.
        ignored = [flag for flag, value in (("--config", args.config), ("--out", args.out),
                                            ("--force", args.force)) if value]
        if ignored:
            raise LyreError(f"--resume continues the run's saved config in place; drop {', '.join(ignored)} "
                            "(change fields with --set)")
        config = load_config(RunDir(args.resume).config_path, args.overrides)
    else:
        preset = resolve_preset(args.config) if args.config else _default_preset()
        config = load_config(preset, args.overrides)
    if args.nproc:
        from lyre.train import distributed
        from lyre.train.trainer import check_train_config

        distributed.launch_command(args.nproc, args.argv, config, check_train_config)
        return
    if args.resume:
        result = train(config, args.resume, resume=True, progress=not args.no_progress)
    else:
        run_dir = args.out or Path("runs") / preset.stem
        result = train(config, run_dir, force=args.force, progress=not args.no_progress)
    if not is_main_process():  # under torchrun, rank 0 speaks for the run
        return
    val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    print(f"done: step {result.step}, val loss {val}, best {result.metric_name} {result.best_metric:.4f}, "
          f"run in {result.run_dir}")


def _default_preset() -> Path:
    """The bundled demo preset: the library defaults are GPT-2 124M, far too big to train on a
    CPU by accident."""
    from lyre.run.config import DEFAULT_PRESET, list_presets

    preset = list_presets().get(DEFAULT_PRESET)
    if preset is None:
        raise LyreError(f"no --config given and the bundled preset {DEFAULT_PRESET} is missing "
                        "(a broken install?); pass a TOML file with --config")
    print(f"lyre: no --config given; training the demo preset {DEFAULT_PRESET} ({preset})", file=sys.stderr)
    return preset


def cmd_info(args) -> None:
    from lyre.run.config import load_config
    from lyre.run.rundir import RunDir
    from lyre.train.info import format_cost, vocab_size_of

    path = None if args.config is None else Path(args.config)
    if path is not None and path.is_dir():
        path = RunDir(path).config_path  # a run directory
    config = load_config(path, args.overrides)  # a preset's name or a TOML/JSON file
    from_preset = path is None or path.suffix != ".json"
    if from_preset and not any(o.split("=")[0].endswith("vocab_size") for o in args.overrides):
        # A preset's vocab_size is a placeholder: training takes the tokenizer's.
        vocab = vocab_size_of(config.data.tokenizer, config.data.corpus) if path else None
        config.model.vocab_size = vocab or config.model.vocab_size
    print(format_cost(config.model))


def cmd_presets(args) -> None:
    from lyre.run.config import PRESETS_DIR, list_presets

    presets = list_presets()
    width = max(map(len, presets), default=0)
    for name, path in presets.items():
        comment = next((line.lstrip("# ").rstrip() for line in path.read_text().splitlines()
                        if line.startswith("#")), "")
        print(f"{name:<{width}}  {comment}")
    print(f"(the files are in {PRESETS_DIR}: copy one to start your own, pass it with --config PATH)")


def cmd_plot(args) -> None:
    from lyre.train.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")
