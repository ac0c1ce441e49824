"""A rejected request body -> one message a client can act on, and the field it is about.

pydantic reports where validation failed as a location such as
`("body", "stop", "list[constrained-str]", 0)`: the member of a union it tried is part of the
path. Clients must never see those internals. This module walks the location through the body
the client sent, so `param` is the client's own path (`stop[0]`, `messages[1].content`), picks
the error of the union member that matches what the client sent, and says the real rule:

    stop: at most 4 sequences
    missing required parameter: model
    top_p: must be <= 1; got 1.5
    prompt: must be a string, a list of strings, a list of token ids or a list of token id lists
"""

from __future__ import annotations

import json
import re
from typing import Any

EMPTY_BODY = ("the request body is empty; send a JSON object such as "
              '{"model": "...", "prompt": "..."} with Content-Type: application/json')
NOT_JSON = "the request body must be JSON sent with the header Content-Type: application/json"

# What a union field accepts, in words (index-free paths).
SHAPES = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token id lists",
    "stop": "a string or a list of strings",
    "messages[].content": 'a string or a list of {"type": "text", "text": "..."} parts',
    "tool_choice": '"none", "auto", "required" or {"type": "function", "function": {"name": "..."}}',
}
# What the items of a list field are called in "at most N ...".
NOUNS = {"stop": "sequences", "prompt": "prompts", "messages": "messages"}
TYPES = {
    "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "an integer", "float_type": "a number", "float_parsing": "a number",
    "finite_number": "a finite number", "bool_type": "true or false", "bool_parsing": "true or false",
    "list_type": "a list", "dict_type": "an object", "model_type": "an object",
    "model_attributes_type": "an object",
}
BOUNDS = {"greater_than_equal": (">=", "ge"), "less_than_equal": ("<=", "le"),
          "greater_than": (">", "gt"), "less_than": ("<", "lt")}
_MISSING = object()


def describe(errors: list[dict], body: Any) -> tuple[str, str | None, str]:
    """(message, param, code) for the first problem of a request body pydantic rejected."""
    if not errors:
        return "invalid request", None, "invalid_request"
    for err in errors:
        if err.get("type") == "json_invalid":
            if isinstance(body, str | bytes) and not body.strip():
                return EMPTY_BODY, None, "empty_body"
            detail = (err.get("ctx") or {}).get("error", "")
            return f"the request body is not valid JSON ({detail})".replace(" ()", ""), None, "invalid_json"
    loc = tuple(errors[0].get("loc", ()))
    if loc in (("body",), ()):  # the body as a whole
        return _describe_body(errors[0], body)
    located = [_Located(err, body) for err in errors]
    first = located[0]
    if first.tag is None:
        return _describe_one(first.err, first.path)
    union = [item for item in located if item.field == first.field and item.tag is not None]
    fitting = [item for item in union if _tag_accepts(item.tag, item.field_value)]
    if not fitting:  # e.g. stop: [1]: only the list member fits, and only as a list
        shallow = [item for item in union if _tag_accepts(item.tag, item.field_value, deep=False)]
        fitting = shallow if len({item.tag for item in shallow}) == 1 else []
    if fitting:
        return _describe_one(fitting[0].err, fitting[0].path)
    shape = SHAPES.get(_generic(first.field)) or _tags_in_words([item.tag for item in union])
    return f"{first.field}: must be {shape}; got {_shown(first.field_value)}", first.field, "invalid_type"


def _describe_body(err: dict, body: Any) -> tuple[str, str | None, str]:
    if err.get("type") == "missing" or body is None or (isinstance(body, str | bytes) and not body.strip()):
        return EMPTY_BODY, None, "empty_body"
    if isinstance(body, bytes | str):  # FastAPI did not parse it: not sent as JSON
        return NOT_JSON, None, "invalid_json"
    return f"the request body must be a JSON object; got {_json_type(body)}", None, "invalid_request"


def _describe_one(err: dict, param: str) -> tuple[str, str | None, str]:
    kind, ctx, got = err.get("type", ""), err.get("ctx") or {}, err.get("input")
    if kind == "missing":
        return f"missing required parameter: {param}", param, "missing_required_parameter"
    if kind == "extra_forbidden":
        return f"unrecognized request argument: {param}", param, "unknown_parameter"
    if kind in TYPES:
        return f"{param}: must be {TYPES[kind]}; got {_shown(got)}", param, "invalid_type"
    if kind in BOUNDS:
        sign, key = BOUNDS[kind]
        return f"{param}: must be {sign} {ctx.get(key)}; got {_shown(got)}", param, "invalid_value"
    if kind == "too_long":
        noun = NOUNS.get(_generic(param), "items")
        return f"{param}: at most {ctx.get('max_length')} {noun}", param, "invalid_value"
    if kind == "too_short":
        if ctx.get("min_length") == 1:
            return f"{param}: must not be empty", param, "invalid_value"
        noun = NOUNS.get(_generic(param), "items")
        return f"{param}: at least {ctx.get('min_length')} {noun}", param, "invalid_value"
    if kind == "string_too_long":
        if ctx.get("max_length") == 0:
            return f"{param} is not supported; leave it out", param, "unsupported_parameter"
        return f"{param}: at most {ctx.get('max_length')} characters", param, "invalid_value"
    if kind == "string_too_short":
        if ctx.get("min_length") == 1:
            return f"{param}: must not be empty", param, "invalid_value"
        return f"{param}: at least {ctx.get('min_length')} characters", param, "invalid_value"
    if kind == "literal_error":
        return f"{param}: must be {ctx.get('expected')}; got {_shown(got)}", param, "invalid_value"
    message = str(err.get("msg", "invalid value"))
    return f"{param}: {message[:1].lower()}{message[1:]}", param, "invalid_value"


class _Located:
    """One error placed in the client's body: its path there (`stop[0]`), and when pydantic
    tried the members of a union, the union field (`stop`), its value and the member (tag)."""

    def __init__(self, err: dict, body: Any) -> None:
        self.err = err
        self.field: str | None = None
        self.field_value: Any = None
        self.tag: str | None = None
        value, path = body, ""
        for seg in (s for s in err.get("loc", ()) if s != "body"):
            if isinstance(seg, int) and isinstance(value, list) and 0 <= seg < len(value):
                path, value = f"{path}[{seg}]", value[seg]
            elif isinstance(value, dict) and seg in value:
                path, value = _join(path, seg), value[seg]
            elif isinstance(seg, str) and _is_tag(seg):
                if self.tag is None:
                    self.field, self.field_value, self.tag = path, value, seg
            else:  # a field the client left out
                path, value = _join(path, str(seg)), _MISSING
        self.path = path


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_tag(segment: str) -> bool:
    """A union member's name in a pydantic location, never a field of ours (snake_case)."""
    return bool(re.search(r"[\[\]\-]", segment)) or segment[:1].isupper() or segment in (
        "str", "int", "float", "bool", "list", "dict")


def _tag_accepts(tag: str, value: Any, deep: bool = True) -> bool:
    """Whether the client's JSON value has the shape of union member `tag` (with `deep`, a
    list's first item too)."""
    if tag.startswith("list[") and tag.endswith("]"):
        if not isinstance(value, list):
            return False
        return not deep or not value or _tag_accepts(tag[5:-1], value[0])
    if tag.endswith("str") or tag.startswith("literal["):  # literal['auto', ...]: a string
        return isinstance(value, str)
    if tag.endswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if tag.endswith("float"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tag[:1].isupper():  # a model class: an object
        return isinstance(value, dict)
    return False


def _tags_in_words(tags: list[str]) -> str:
    def words(tag: str) -> str:
        if tag.startswith("list["):
            return "a list of " + words(tag[5:-1]).removeprefix("a ").removeprefix("an ") + "s"
        for suffix, text in (("str", "a string"), ("int", "an integer"), ("float", "a number")):
            if tag.endswith(suffix):
                return text
        return "an object"

    shapes = list(dict.fromkeys(words(t) for t in tags))
    return shapes[0] if len(shapes) == 1 else ", ".join(shapes[:-1]) + " or " + shapes[-1]


def _generic(path: str) -> str:
    return re.sub(r"\[\d+\]", "[]", path)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _shown(value: Any, limit: int = 40) -> str:
    """The client's value as JSON, cut short (a prompt can be a megabyte)."""
    if value is _MISSING:
        return "nothing"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
