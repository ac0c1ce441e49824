"""Constrained decoding: the output of a row must match a JSON schema, a regex, a list of
choices or a grammar (docs/structured.md).

    Constraint.json(schema)        any JSON matching a JSON schema ({} / None: any JSON object)
    Constraint.regex(pattern)      text matching a regular expression
    Constraint.choice(["a", "b"])  exactly one of the strings
    Constraint.grammar(text)       a Lark grammar (llguidance's dialect, %json{...} included),
                                   or GBNF with syntax="gbnf"

At every step the engine asks a row's matcher which tokens keep the text inside the language and
masks all others before temperature/top-k/top-p (lyre/engine/sampling.py). The grammar machinery
is llguidance's (MIT); this package only adapts lyre's tokenizers to it and keeps its state per row:

    constraint.py  Constraint, ConstraintError (torch-free, imported by the CLI and the server)
    tokenizer.py   a lyre Tokenizer -> llguidance's LLTokenizer (token bytes + <|endoftext|>)
    compile.py     Constraint -> a checked grammar, cached, bounded in time and size
    matcher.py     RowMatcher: the per-row state the engine drives (allowed tokens, accept,
                   forced tokens, accepting?)

Importing this package loads neither torch nor llguidance; `check_constraint` loads llguidance.
"""

from __future__ import annotations

from lyre.constrain.constraint import Constraint, ConstraintError

__all__ = ["Constraint", "ConstraintError", "check_constraint"]


def check_constraint(constraint: Constraint, tokenizer) -> None:
    """Compile now (cached) or raise ConstraintError: invalid JSON Schema, unsupported feature,
    a grammar that accepts nothing, compile past a time/size bound."""
    from lyre.constrain.compile import compile_constraint

    compile_constraint(constraint, tokenizer)
