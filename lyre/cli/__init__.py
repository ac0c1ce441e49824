"""The `lyre` command: a thin layer of flags over the Python API.

Every subcommand parses its flags and calls one function of the package. A LyreError (bad input)
becomes a one-line message on stderr and exit code 2; Ctrl-C exits with 130, and training
stopped by SIGTERM (after saving a checkpoint) with 143.

One module per stage of the journey, each holding its verbs as pairs of short functions
(`_add_VERB` builds the flags, `cmd_VERB` calls the API):

    pretrain.py   prepare, train, info, presets, plot
    sample.py     sample, eval
    interop.py    import-hf, export-hf
    assistant.py  chat, serve
    finetune.py   finetune, judge, classify
    data.py       data calculator (generated data sets)
    agent.py      agent (a model that calls tools: lyre.agent)
    zoo.py        translate, attention
    flags.py      flags shared by several verbs (sampling, model loading), "did you mean"

`lyre rag ...` (many verbs) lives beside its code in lyre/rag/cli.py. Heavy imports (torch,
numpy) happen inside the commands, so `lyre --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from lyre.cli import agent, assistant, data, finetune, interop, pretrain, sample, zoo
from lyre.cli.flags import Parser
from lyre.core import ranks
from lyre.core.errors import LyreError

EXIT_USAGE = 2


def _add_rag(sub) -> None:
    from lyre.rag.cli import add_rag_parser  # `lyre rag ...` lives with the rest of lyre.rag

    add_rag_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    from lyre import __version__

    parser = Parser(prog="lyre", description="Build your own GPT from scratch.")
    parser.add_argument("--version", action="version", version=f"lyre {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    # The order of `lyre --help`: the journey from a corpus to an assistant.
    for register in (pretrain.register, sample.register, interop.register, assistant.register,
                     finetune.register, data.register, _add_rag, agent.register, zoo.register):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        args.func(args)
    except LyreError as e:
        if getattr(e, "reported_by_rank_zero", False):  # another process printed it already
            return EXIT_USAGE
        where = f"[rank {ranks.rank()}] " if ranks.world_size() > 1 and not ranks.is_main_process() else ""
        print(f"lyre: error: {where}{e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", 130)  # lyre.train.trainer.Stopped: 143 after SIGTERM, said so already
        if code == 130 and ranks.is_main_process():  # under torchrun, rank 0 speaks for the run
            print("\nlyre: interrupted", file=sys.stderr)
        return code
    except BrokenPipeError:  # e.g. `lyre sample ... | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
