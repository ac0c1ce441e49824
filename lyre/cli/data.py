"""`lyre data ...`: generated data sets. One verb so far, `lyre data calculator` (tool use)."""

from __future__ import annotations

from pathlib import Path

from lyre.cli.flags import Parser
from lyre.core.errors import LyreError


def register(sub) -> None:
    p = sub.add_parser("data", help="generate data sets (calculator: tool-use conversations)",
                       description="Generate data sets for fine-tuning.")
    verbs = p.add_subparsers(dest="data_command", required=True, metavar="SET", parser_class=Parser)
    _add_calculator(verbs)


def _add_calculator(verbs) -> None:
    p = verbs.add_parser("calculator", help="arithmetic questions answered through a calculator tool",
                         description="Seeded synthetic chat JSONL: an arithmetic question, the "
                                     "assistant's calculator call, the tool's result, the final "
                                     "answer (docs/calculator.md). The held-out split uses numbers "
                                     "the training split never contains.")
    p.add_argument("--n", type=int, required=True, help="records to write")
    p.add_argument("--out", type=Path, required=True, help="the JSONL file to write")
    p.add_argument("--seed", type=int, default=0, help="the draw (default 0)")
    p.add_argument("--held-out", type=int, default=0, metavar="N",
                   help="also write N held-out records (numbers never in training) to --held-out-out")
    p.add_argument("--held-out-out", type=Path, metavar="FILE", help="where the held-out records go")
    p.add_argument("--no-tool", action="store_true",
                   help="the assistant answers directly, without a call (the baseline)")
    p.add_argument("--text-out", type=Path, metavar="FILE",
                   help="also write the training conversations as plain text, laid out by "
                        "--template: a pretraining corpus")
    p.add_argument("--text-tools-share", type=float, default=1.0, metavar="F",
                   help="share of the --text-out conversations that show the tool list (default 1: "
                        "all); the others are shorter, so pretraining sees more questions per token")
    p.add_argument("--template", default="simple",
                   help="chat template of --text-out (default simple; use the one you fine-tune with)")
    p.set_defaults(func=cmd_calculator)


def cmd_calculator(args) -> None:
    from lyre.data import calculator

    if args.n <= 0:
        raise LyreError(f"--n must be positive; got {args.n}")
    if args.held_out < 0:
        raise LyreError(f"--held-out must not be negative; got {args.held_out}")
    if not 0.0 <= args.text_tools_share <= 1.0:
        raise LyreError(f"--text-tools-share must be in [0, 1]; got {args.text_tools_share}")
    if args.held_out and args.held_out_out is None:
        raise LyreError("--held-out N needs --held-out-out FILE: where to write them")
    tool = not args.no_tool
    rows = list(calculator.records(args.n, args.seed, tool=tool))
    print(f"wrote {calculator.write_jsonl(args.out, rows):,} records to {args.out}")
    if args.held_out:
        held = calculator.records(args.held_out, args.seed, held_out=True, tool=tool)
        print(f"wrote {calculator.write_jsonl(args.held_out_out, held):,} held-out records to "
              f"{args.held_out_out}")
    if args.text_out:
        from lyre.chat.templates import get_template
        from lyre.finetune.encode import conversation_text
        from lyre.finetune.records import to_record

        template = get_template(args.template)
        share = args.text_tools_share
        parts = []
        for i, r in enumerate(rows):
            record = to_record(r)
            if int((i + 1) * share) == int(i * share):  # an exact share, spread evenly
                record.tools = []  # this one without the tool list
            parts.append(conversation_text(record, template))
        text = "\n".join(parts) + "\n"
        calculator.write_text(args.text_out, text)
        print(f"wrote {len(text):,} characters of {args.template!r} text to {args.text_out}")
