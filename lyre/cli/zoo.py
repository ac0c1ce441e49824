"""Verbs of the model zoo: `translate` (encoder-decoder runs) and `attention` (attention maps)."""

from __future__ import annotations

from pathlib import Path

from lyre.cli.flags import (
    add_checkpoint_flags,
    add_replace_unknown_flag,
    add_threads_flag,
    apply_threads,
)
from lyre.core.errors import LyreError


def register(sub) -> None:
    _add_translate(sub)
    _add_attention(sub)


def _add_translate(sub) -> None:
    p = sub.add_parser("translate", help="translate with an encoder-decoder run (arch seq2seq)",
                       description="Map source texts to targets with a seq2seq run: greedy, or beam "
                                   "search with --beam N. One output line per input.")
    p.add_argument("run_dir", type=Path, help="run directory of an encoder-decoder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a source text (repeatable)")
    src.add_argument("--file", type=Path, help="source texts, one per line")
    p.add_argument("--beam", type=int, default=1, help="beam width; 1 is greedy (default 1)")
    p.add_argument("--max-length", type=int, default=None, help="most target tokens (default: the context)")
    add_replace_unknown_flag(p)
    add_threads_flag(p)
    add_checkpoint_flags(p)
    p.set_defaults(func=cmd_translate)


def _add_attention(sub) -> None:
    p = sub.add_parser("attention", help="draw a run's attention maps on a prompt",
                       description="Draw the attention of every layer and head on a prompt (tokens on "
                                   "the axes) into an image; for an encoder-decoder, on its translation.")
    p.add_argument("run_dir", type=Path, help="run directory (gpt or seq2seq)")
    p.add_argument("--prompt", required=True, help="the text to look at (a seq2seq run's source)")
    p.add_argument("--out", type=Path, required=True, help="image path: .png, .svg or .pdf")
    p.add_argument("--kind", default=None, choices=["cross", "encoder", "decoder"],
                   help="seq2seq runs: which attention (default cross); a GPT has self-attention only")
    add_checkpoint_flags(p)
    p.set_defaults(func=cmd_attention)


def cmd_translate(args) -> None:
    from lyre.generate.runs import load_run
    from lyre.tokenizers.char import replace_unknown
    from lyre.zoo.translate import translate

    apply_threads(args.threads)
    texts = args.text if args.text is not None else read_lines(args.file)
    run = load_run(args.run_dir, args.checkpoint, args.device)
    if args.replace_unknown:
        replace_unknown(run.tokenizer)
    for line in translate(run.model, run.tokenizer, texts, beam=args.beam, max_length=args.max_length):
        print(line)


def read_lines(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LyreError(f"file {path} not found") from None
    except UnicodeDecodeError:
        raise LyreError(f"file {path} is not UTF-8 text") from None
    if not lines:
        raise LyreError(f"file {path} is empty: give one source text per line")
    return lines


def cmd_attention(args) -> None:
    from lyre.zoo.attention import draw_run

    print(f"wrote {draw_run(args.run_dir, args.prompt, args.out, kind=args.kind, checkpoint=args.checkpoint, device=args.device)}")
