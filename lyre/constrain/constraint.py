"""What a constrained row must produce (Constraint) and the error a bad one raises."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lyre.core.errors import LyreError

KINDS = ("json", "regex", "choice", "lark", "gbnf")


class ConstraintError(LyreError):
    """A constraint that cannot be used: bad schema, bad regex, a grammar that accepts nothing,
    compilation past its bounds. `param` names the request field to blame (the server's 400
    `param`), or None."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Constraint:
    """One constraint on a row's output; hashable, so compiled grammars are cached by it.

    kind "json": value is a JSON-schema dict ({} or None: any JSON value, OpenAI's json_object);
    "regex": a pattern str; "choice": a tuple of strings; "lark"/"gbnf": grammar text.
    """

    kind: str
    value: Any

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConstraintError(f"constraint kind must be one of {', '.join(KINDS)}; got {self.kind!r}")

    def __hash__(self) -> int:
        return hash((self.kind, self.key()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Constraint) and (self.kind, self.key()) == (other.kind, other.key())

    def key(self) -> str:
        """A canonical string of the value (a schema dict is not hashable; its JSON is)."""
        import json

        if self.kind == "json":
            return json.dumps(self.value or {}, sort_keys=True)
        if self.kind == "choice":
            return json.dumps(list(self.value))
        return self.value

    @staticmethod
    def json(schema: dict | None = None) -> Constraint:
        if schema is not None and not isinstance(schema, dict | bool):
            raise ConstraintError(f"a JSON schema must be an object; got {type(schema).__name__}")
        return Constraint("json", schema)

    @staticmethod
    def regex(pattern: str) -> Constraint:
        if not isinstance(pattern, str) or not pattern:
            raise ConstraintError("a regex constraint needs a non-empty pattern string")
        return Constraint("regex", pattern)

    @staticmethod
    def choice(options: Sequence[str]) -> Constraint:
        if isinstance(options, str) or not isinstance(options, Sequence) or not options:
            raise ConstraintError("a choice constraint needs a non-empty list of strings")
        if not all(isinstance(o, str) and o for o in options):
            raise ConstraintError("choice options must be non-empty strings")
        return Constraint("choice", tuple(options))

    @staticmethod
    def grammar(text: str, syntax: str = "lark") -> Constraint:
        if syntax not in ("lark", "gbnf"):
            raise ConstraintError(f"grammar syntax must be 'lark' or 'gbnf'; got {syntax!r}")
        if not isinstance(text, str) or not text.strip():
            raise ConstraintError("a grammar constraint needs non-empty grammar text")
        return Constraint(syntax, text)
