"""The `lyre` command: a thin layer of flags over the Python API.

Every subcommand parses its flags and calls one function of the package. A LyreError (bad input)
becomes a one-line message on stderr and exit code 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lyre.errors import LyreError

EXIT_USAGE = 2


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize corpus files into train/val token files",
                       description="Tokenize text files into memory-mapped train/val token files.")
    p.add_argument("corpus", nargs="+", type=Path, help="UTF-8 text file(s)")
    p.add_argument("--tokenizer", default="char",
                   help="char | bpe:VOCAB_SIZE (trained on the corpus) | gpt2:DIR (encoder.json + vocab.bpe)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="tail fraction of each file kept for validation (default 0.1)")
    p.add_argument("--force", action="store_true", help="overwrite an existing prepared directory")
    p.set_defaults(func=cmd_prepare)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a TOML preset",
                       description="Train a model. Presets live in configs/; every field can be overridden.")
    p.add_argument("--config", type=Path, help="TOML preset, e.g. configs/iliad-char.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=3e-4 --set n_layer=6 (repeatable)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite a run directory that holds another run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text from a run's checkpoint, streamed as it is produced.")
    p.add_argument("run_dir", type=Path, help="run directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default="", help="text to continue (default: start of text)")
    src.add_argument("--prompt-file", type=Path, help="read the prompt from a file")
    p.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate (default 500)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=200, help="keep the k most likely tokens; 0 disables (default 200)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold in (0, 1] (default 1.0)")
    p.add_argument("--seed", type=int, default=None, help="random seed: same seed, same output")
    p.add_argument("--num-samples", type=int, default=1, help="how many samples (default 1)")
    p.add_argument("--checkpoint", default="best", help="best or last (default best)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.set_defaults(func=cmd_sample)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="parameters, memory and FLOPs of a model config",
                       description="Print parameters, memory and FLOPs per token of a model config.")
    p.add_argument("config", nargs="?", type=Path, help="TOML preset or RUN_DIR (default: GPT-2 124M)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set n_layer=96 --set n_embd=12288")
    p.set_defaults(func=cmd_info)


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw the loss curves of a run",
                       description="Draw train/val loss curves from RUN_DIR/metrics.jsonl into a PNG.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, help="PNG path (default RUN_DIR/loss.png)")
    p.set_defaults(func=cmd_plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lyre", description="Build your own GPT from scratch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_prepare, _add_train, _add_sample, _add_info, _add_plot):
        add(sub)
    return parser


# ----------------------------------------------------------------------------------------------
# Commands


def cmd_prepare(args) -> None:
    from lyre.data import prepare

    meta = prepare(args.corpus, args.tokenizer, args.out, val_fraction=args.val_fraction, force=args.force)
    print(f"wrote {args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens, "
          f"vocab {meta['vocab_size']:,} ({meta['dtype']})")


def cmd_train(args) -> None:
    from lyre.config import load_config
    from lyre.train import train

    if args.resume:
        config = load_config(args.resume / "config.json", args.overrides)
        result = train(config, args.resume, resume=True, progress=not args.no_progress)
    else:
        config = load_config(args.config, args.overrides)
        name = args.config.stem if args.config else "default"
        run_dir = args.out or Path("runs") / name
        result = train(config, run_dir, force=args.force, progress=not args.no_progress)
    val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    print(f"done: step {result.step}, val loss {val}, best {result.best_val_loss:.4f}, run in {result.run_dir}")


def cmd_sample(args) -> None:
    from lyre.generate import SamplingConfig, encode_prompt, generate_tokens, stream_text
    from lyre.runs import load_run

    if args.num_samples < 1:
        raise LyreError(f"--num-samples must be >= 1; got {args.num_samples}")
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    sampling.validate()
    run = load_run(args.run_dir, args.checkpoint, args.device)
    prompt = _read_prompt(args)
    ids, dropped = encode_prompt(run.tokenizer, prompt, run.config.model.block_size)
    if dropped:
        print(f"[notice] prompt cropped: its first {dropped} tokens do not fit the context of "
              f"{run.config.model.block_size}", file=sys.stderr)
    stop = [run.tokenizer.eot_id] if run.tokenizer.eot_id is not None else []
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        if args.seed is not None:
            sampling.seed = args.seed + i
        sys.stdout.write(prompt)
        new_ids = generate_tokens(run.model, ids, sampling, stop_ids=stop, device=run.device)
        for piece in stream_text(run.tokenizer.token_bytes, new_ids):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


def _read_prompt(args) -> str:
    if not args.prompt_file:
        return args.prompt
    try:
        return args.prompt_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LyreError(f"prompt file {args.prompt_file} not found") from None
    except UnicodeDecodeError:
        raise LyreError(f"prompt file {args.prompt_file} is not UTF-8 text") from None


def cmd_info(args) -> None:
    from lyre.config import load_config
    from lyre.info import format_cost

    path = args.config
    if path is not None and path.is_dir():
        path = path / "config.json"
    print(format_cost(load_config(path, args.overrides).model))


def cmd_plot(args) -> None:
    from lyre.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LyreError as e:
        print(f"lyre: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nlyre: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lyre sample ... | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
