"""A tool: a Python function the model may call, with the JSON schema of its arguments.

    @tool
    def add(a: int, b: int = 0) -> int:
        \"\"\"Add two integers.

        Args:
            a: the first one
            b: the second one
        \"\"\"
        return a + b

`@tool` reads the function once: its name, the first paragraph of its docstring (the
description the model sees), the `Args:` section (one description per parameter) and the type
hints, which become the JSON schema of the arguments (the `parameters` of OpenAI's tool
declaration). The decorated function is still an ordinary function (`add(1, 2)` works); the
agent loop calls it through `Tool.invoke`, which first checks the model's arguments against the
schema with jsonschema, so a function only ever sees arguments of the types it declared.

Type hints -> JSON schema (what a model needs, no more):

    int -> integer, float -> number, str -> string, bool -> boolean, dict -> object
    list[X] -> array of X, Literal["a", "b"] -> enum, X | None (Optional[X]) -> X or null
    a default value -> not required, and "default" in the schema
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lyre.chat.tools import Tool as ToolSpec
from lyre.core.errors import LyreError

DEFAULT_TIMEOUT_S = 10.0  # every call runs under a time limit (lyre.agent.run)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")  # OpenAI's function-name rule


class ToolError(Exception):
    """What a tool says when it refuses its input (a bad expression, a forbidden statement, a
    time limit): the message goes back to the model as the call's result, and is counted."""


@dataclass
class Tool:
    """A function the model may call: its declaration and how to run it.

    `fn(**arguments)` returns the result (a str as is, anything else as JSON) or raises
    ToolError (or any exception) to answer with an error. `timeout_s` bounds one call.
    """

    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any]
    timeout_s: float = DEFAULT_TIMEOUT_S
    _validator: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        import jsonschema

        if not _NAME.match(self.name):
            raise LyreError(f"tool name {self.name!r}: use letters, digits, _ and - (at most 64)")
        try:
            jsonschema.Draft202012Validator.check_schema(self.parameters)
        except jsonschema.SchemaError as e:
            raise LyreError(f"tool {self.name}: its parameters are not a valid JSON Schema "
                            f"({e.message})") from None
        self._validator = jsonschema.Draft202012Validator(self.parameters)

    def spec(self) -> ToolSpec:
        """The declaration the model sees (lyre.chat.tools.Tool: OpenAI's function form)."""
        return ToolSpec(self.name, self.description, self.parameters)

    def check(self, arguments: object) -> dict:
        """The arguments, checked against the schema; ToolError says the first problem."""
        if not isinstance(arguments, dict):
            raise ToolError(f"the arguments of {self.name} must be a JSON object")
        error = next(iter(sorted(self._validator.iter_errors(arguments), key=lambda e: e.path)),
                     None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path)
            raise ToolError(f"invalid arguments for {self.name}: {error.message}"
                            + (f" (at {where})" if where else ""))
        return arguments

    def invoke(self, arguments: dict) -> str:
        """Check the arguments, call the function, return its result as text."""
        return result_text(self.fn(**self.check(arguments)))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)  # a decorated function stays callable


def result_text(value: Any) -> str:
    """A tool's return value as the text of a `tool` message."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S):
    """Make a function a Tool (`@tool` or `@tool(name=..., timeout_s=...)`)."""

    def wrap(f: Callable[..., Any]) -> Tool:
        summary, arg_docs = parse_docstring(inspect.getdoc(f) or "")
        return Tool(name or f.__name__, description if description is not None else summary,
                    function_schema(f, arg_docs), f, timeout_s)

    return wrap(fn) if fn is not None else wrap


# ----------------------------------------------------------------------------------------------
# Docstrings: the first paragraph, and the Args: section (Google style)


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the first paragraph as one line, {parameter: its description} from `Args:`)."""
    summary = " ".join(doc.strip().split("\n\n")[0].split())
    lines = doc.splitlines()
    heads = [i for i, line in enumerate(lines) if line.strip().lower() in _ARGS_HEADS]
    if heads and heads[0] == 0:
        summary = ""  # a docstring that is only an Args: section
    if not heads:
        return summary, {}
    args: dict[str, str] = {}
    entry_indent, current = None, None
    for line in lines[heads[0] + 1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        entry_indent = indent if entry_indent is None else entry_indent
        if indent < entry_indent:  # the next section (Returns:, Raises:) or the end
            break
        match = _ENTRY.match(line.strip())
        if indent == entry_indent and match:
            current = match.group(1)
            args[current] = match.group(2)
        elif current is not None:  # a deeper line continues the entry
            args[current] = f"{args[current]} {line.strip()}".strip()
    return summary, args


_ARGS_HEADS = ("args:", "arguments:", "parameters:")
_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")  # name (type): text


# ----------------------------------------------------------------------------------------------
# Type hints -> JSON schema

_SIMPLE = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object"}


def type_schema(hint: Any, where: str) -> dict:
    """The JSON schema of one type hint; a LyreError names `where` for an unsupported one."""
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        kinds = {type(a) for a in args}
        schema: dict = {"enum": list(args)}
        if len(kinds) == 1 and next(iter(kinds)) in _SIMPLE:
            schema = {"type": _SIMPLE[next(iter(kinds))], **schema}
        return schema
    if origin is list:
        return {"type": "array", "items": type_schema(args[0], where)} if args else {"type": "array"}
    if origin is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        inner = [type_schema(a, where) for a in options]
        if len(options) < len(args):
            inner.append({"type": "null"})
        return inner[0] if len(inner) == 1 else {"anyOf": inner}
    raise LyreError(f"{where} has the type {hint!r}; a tool's parameters may be int, float, str, "
                    "bool, dict, list[...], Literal[...] or Optional[...]")


def function_schema(fn: Callable[..., Any], arg_docs: dict[str, str] | None = None) -> dict:
    """The `parameters` schema of `fn`: one property per parameter, from its hint and default."""
    arg_docs = arg_docs or {}
    hints = typing.get_type_hints(fn)
    properties: dict[str, dict] = {}
    required: list[str] = []
    for p in inspect.signature(fn).parameters.values():
        where = f"tool {fn.__name__}: parameter {p.name}"
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise LyreError(f"{where}: *args, **kwargs and positional-only parameters cannot "
                            "be given by name in JSON")
        if p.name not in hints:
            raise LyreError(f"{where} has no type hint; the schema is made from the hints")
        schema = type_schema(hints[p.name], where)
        if p.name in arg_docs:
            schema["description"] = arg_docs[p.name]
        if p.default is p.empty:
            required.append(p.name)
        else:
            schema["default"] = p.default
        properties[p.name] = schema
    out: dict = {"type": "object", "properties": properties, "required": required,
                 "additionalProperties": False}
    return out
