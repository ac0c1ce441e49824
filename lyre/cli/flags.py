"""Flags and parser behaviour shared by several verbs."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lyre.core.errors import LyreError
from lyre.core.io import read_text


class Parser(argparse.ArgumentParser):
    """argparse, plus "did you mean" for a mistyped command or choice."""

    def error(self, message: str):
        import difflib
        import re

        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = re.findall(r"'?([\w.-]+)'?", match.group(2))
            close = difflib.get_close_matches(match.group(1), choices, n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        super().error(message)


class IntermixedParser(Parser):
    """A verb whose positionals may sit on both sides of its options (`lyre classify RUN --json
    TEXT`, `lyre agent RUN --tools calculator "question"`): argparse's intermixed parsing (plain
    argparse would give a run of positionals to the first positional that takes them), and
    anything left over is this verb's error, shown with this verb's usage (not `lyre`'s)."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:  # parse_known_intermixed_args calls back here for its two passes
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            namespace, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, []


@contextmanager
def intermixed_parsing(sub) -> Iterator[None]:
    """Verbs added inside get IntermixedParser: the subparsers action builds each verb's parser
    with its parser class (argparse's `_parser_class`)."""
    default, sub._parser_class = sub._parser_class, IntermixedParser
    try:
        yield
    finally:
        sub._parser_class = default


def add_sampling_flags(p, max_new_tokens: int) -> None:
    """The sampling controls of `sample` and `chat`; defaults from lyre.core.sampling_defaults."""
    from lyre.core import sampling_defaults as S

    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"tokens to generate (default {max_new_tokens})")
    p.add_argument("--temperature", type=float, default=S.DEFAULT_TEMPERATURE,
                   help=f"0 means greedy (default {S.DEFAULT_TEMPERATURE})")
    p.add_argument("--top-k", type=int, default=S.DEFAULT_TOP_K,
                   help=f"keep the k most likely tokens; 0 disables (default {S.DEFAULT_TOP_K})")
    p.add_argument("--top-p", type=float, default=S.DEFAULT_TOP_P,
                   help=f"nucleus sampling threshold in (0, 1] (default {S.DEFAULT_TOP_P})")
    p.add_argument("--repetition-penalty", type=float, default=S.DEFAULT_REPETITION_PENALTY,
                   help="> 1 discourages repeating tokens of the prompt and output "
                        f"(default {S.DEFAULT_REPETITION_PENALTY}: off)")
    p.add_argument("--seed", type=int, default=None, help="random seed: same seed, same output")


def add_replace_unknown_flag(p) -> None:
    p.add_argument("--replace-unknown", action="store_true",
                   help="char-level models: replace characters the model never saw with '?' (or a "
                        "space) instead of refusing the text; to record it with the run, set "
                        "\"unk\": \"?\" in RUN_DIR/tokenizer/tokenizer.json")


def add_threads_flag(p) -> None:
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (default 0: torch's choice, one per core)")


def apply_threads(threads: int) -> None:
    """--threads: torch's CPU threads for the rest of this command (0 leaves torch's choice)."""
    if threads < 0:
        raise LyreError(f"--threads must be >= 0; got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)


def add_model_flags(p) -> None:
    """How `sample`, `chat` and `serve` load a run's model (runs.load_run)."""
    add_checkpoint_flags(p)
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--fp16", dest="weights", action="store_const", const="fp16", default="fp32",
                         help="add fp16 copies of the weights (CPU only): ~1.5-2x faster decoding of "
                              "one or a few rows, logits within ~1e-3 of fp32, 1.5x the weight memory")
    weights.add_argument("--int8", dest="weights", action="store_const", const="int8",
                         help="int8 weights (CPU only): 2-4x faster decoding, slightly different numbers")


def add_checkpoint_flags(p) -> None:
    """Which checkpoint of a run, on which device: every verb that loads a run."""
    p.add_argument("--checkpoint", default="best", help="best or last (default best)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")


def add_constraint_flags(p) -> None:
    """`--json-schema/--regex/--choice/--grammar` of `sample` and `chat` (docs/structured.md)."""
    g = p.add_argument_group("constrained output (docs/structured.md); at most one of").add_mutually_exclusive_group()
    g.add_argument("--json-schema", type=Path, metavar="FILE",
                   help="the output is JSON valid under the JSON schema in FILE ({} : any JSON object)")
    g.add_argument("--regex", metavar="PATTERN", help="the output matches the regular expression")
    g.add_argument("--choice", metavar="A,B,...", help="the output is exactly one of these strings")
    g.add_argument("--grammar", type=Path, metavar="FILE",
                   help="the output follows the grammar in FILE: Lark (llguidance's dialect), "
                        "or GBNF when FILE ends in .gbnf")


def constraint_from_args(args):
    """The Constraint the constraint flags ask for, or None; a LyreError for a bad file."""
    import json

    from lyre.constrain import Constraint

    if args.regex is not None:
        return Constraint.regex(args.regex)
    if args.choice is not None:
        options = [o for o in args.choice.split(",") if o]
        return Constraint.choice(options)
    if args.json_schema is not None:
        text = read_text(args.json_schema, "--json-schema file")
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as e:
            raise LyreError(f"--json-schema {args.json_schema} is not valid JSON ({e})") from None
        if not isinstance(schema, dict):
            raise LyreError(f"--json-schema {args.json_schema} must hold a JSON object (a schema)")
        return Constraint.json(schema)
    if args.grammar is not None:
        syntax = "gbnf" if args.grammar.suffix == ".gbnf" else "lark"
        return Constraint.grammar(read_text(args.grammar, "--grammar file"), syntax)
    return None
