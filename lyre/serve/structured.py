"""A request's structured-output and tool fields -> what the engine must produce, checked.

    plan = chat_plan(req)          # response_format, tools, tool_choice, vLLM's extras
    plan = completion_plan(req)    # vLLM's extras only
    await compile_plan(plan, tokenizer)   # a bad schema or grammar is a 400 before any output

Which constraint a chat request gets (docs/serve.md, "Tools and structured output"):

    tool_choice "required" / a named function   tool-call block(s) only, from the first token
    tool_choice "auto" (the default with tools)  free text (or response_format's JSON) OR block(s)
    tool_choice "none", or no tools             response_format's JSON, or an extra, or nothing
    response_format json_object / json_schema   JSON (of that schema)
    structured_outputs / guided_* (vLLM)         json, regex, choice or grammar (Lark or GBNF)

An extra together with response_format, or with tools that may be called, is a 400: two
constraints on one answer cannot both hold. Every problem is a 400 whose `param` is the field.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from lyre.chat import tools as T
from lyre.constrain import Constraint, ConstraintError, check_constraint
from lyre.core.errors import LyreError
from lyre.serve import schemas as S
from lyre.serve.errors import APIError


@dataclass
class Plan:
    """What one request asks of the engine and of the answer's parsing."""

    constraint: Constraint | None = None
    param: str | None = None  # the request field the constraint came from (400s name it)
    tools: list[T.Tool] = field(default_factory=list)  # rendered into the prompt
    parse_calls: bool = False  # read <tool_call> blocks out of the answer
    free_text: bool = True  # the answer may be free text (the template's stop strings apply)


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


# ----------------------------------------------------------------------------------------------
# JSON Schemas


def check_schema(schema: object, param: str) -> dict:
    """A JSON Schema the client sent, checked against the metaschema (Draft 2020-12)."""
    import jsonschema

    if not isinstance(schema, dict):
        raise _bad(f"{param}: a JSON Schema must be an object", param)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        raise _bad(f"{param} is not a valid JSON Schema: {e.message}"
                   + (f" (at {where})" if where else ""), param, "invalid_schema") from None
    return schema


def strict_schema(schema: dict) -> dict:
    """OpenAI's `strict: true`: every object schema without `additionalProperties` gets false
    (its properties are all there is). A copy; the client's schema is not changed."""
    def walk(node):
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items()}
        if (out.get("type") == "object" or "properties" in out) and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out

    return walk(schema)


# ----------------------------------------------------------------------------------------------
# vLLM's extras (both endpoints)


def extra_constraint(req: S._SamplingFields) -> tuple[Constraint, str] | None:
    """The constraint of `structured_outputs` or a guided_* field, and its param; None if none."""
    given: list[tuple[str, str, object]] = []  # (param, kind, value)
    so = req.structured_outputs
    if so is not None:
        for key, value in (("json", so.json_), ("regex", so.regex), ("choice", so.choice),
                           ("grammar", so.grammar)):
            if value is not None:
                given.append((f"structured_outputs.{key}", key, value))
        if not given:
            raise _bad("structured_outputs: give one of json, regex, choice or grammar",
                       "structured_outputs")
    for key in ("json", "regex", "choice", "grammar"):
        value = getattr(req, f"guided_{key}")
        if value is not None:
            given.append((f"guided_{key}", key, value))
    if not given:
        return None
    if len(given) > 1:
        raise _bad(f"{given[1][0]}: only one constraint per request; {given[0][0]} is already "
                   "given", given[1][0])
    param, kind, value = given[0]
    try:
        if kind == "json":
            schema = None if value is True or value == {} else check_schema(value, param)
            return Constraint.json(schema), param
        if kind == "regex":
            return Constraint.regex(value), param
        if kind == "choice":
            return Constraint.choice(list(value)), param
        syntax = "gbnf" if "::=" in value else "lark"  # GBNF rules read `name ::= ...`
        return Constraint.grammar(value, syntax=syntax), param
    except ConstraintError as e:
        raise _bad(f"{param}: {e}", param) from None


def completion_plan(req: S.CompletionRequest) -> Plan:
    extra = extra_constraint(req)
    if extra is None:
        return Plan()
    return Plan(constraint=extra[0], param=extra[1], free_text=False)


# ----------------------------------------------------------------------------------------------
# Chat: response_format, tools, tool_choice


def response_constraint(fmt: S.ResponseFormat | None) -> tuple[dict | None, str] | None:
    """(the schema of the answer, its param) for json_object / json_schema; None for text."""
    if fmt is None or fmt.type == "text":
        if fmt is not None and fmt.json_schema is not None:
            raise _bad('response_format.json_schema needs type "json_schema"', "response_format.type")
        return None
    if fmt.type == "json_object":
        return {"type": "object"}, "response_format"
    param = "response_format.json_schema"
    if fmt.json_schema is None:
        raise _bad(f'missing required parameter: {param} (with type "json_schema")', param,
                   "missing_required_parameter")
    schema = fmt.json_schema.schema_
    if schema is None:
        return {"type": "object"}, param
    schema = check_schema(schema, f"{param}.schema")
    return (strict_schema(schema) if fmt.json_schema.strict else schema), f"{param}.schema"


def declared_tools(req: S.ChatCompletionRequest) -> list[T.Tool]:
    """The request's tools, each checked: a unique name and a valid parameters schema."""
    tools, seen = [], {}
    for i, entry in enumerate(req.tools or []):
        fn = entry.function
        if fn.name in seen:
            raise _bad(f"tools[{i}].function.name: {fn.name!r} is already the name of "
                       f"tools[{seen[fn.name]}]; tool names must be unique",
                       f"tools[{i}].function.name")
        seen[fn.name] = i
        params = {"type": "object", "properties": {}} if fn.parameters is None else \
            check_schema(fn.parameters, f"tools[{i}].function.parameters")
        tools.append(T.Tool(fn.name, fn.description or "", strict_schema(params) if fn.strict else params))
    return tools


def check_history(req: S.ChatCompletionRequest) -> None:
    """Each tool message answers an earlier call; each earlier call's arguments are JSON."""
    call_ids: set[str] = set()
    for i, m in enumerate(req.messages):
        if m.tool_calls and m.role != "assistant":
            raise _bad(f"messages[{i}].tool_calls: only assistant messages make calls",
                       f"messages[{i}].tool_calls")
        for j, call in enumerate(m.tool_calls or []):
            try:
                T.call_of(call.model_dump())
            except LyreError as e:
                raise _bad(f"messages[{i}].tool_calls[{j}].function.arguments: {e}",
                           f"messages[{i}].tool_calls[{j}].function.arguments") from None
            call_ids.add(call.id)
        if m.role == "tool":
            param = f"messages[{i}].tool_call_id"
            if not m.tool_call_id:
                raise _bad(f"missing required parameter: {param} (a tool message answers a call)",
                           param, "missing_required_parameter")
            if m.tool_call_id not in call_ids:
                raise _bad(f"{param}: {m.tool_call_id!r} matches no tool call of an earlier "
                           "assistant message", param)
        elif m.tool_call_id is not None:
            param = f"messages[{i}].tool_call_id"
            raise _bad(f"{param}: only tool messages have a tool_call_id", param)


def chat_plan(req: S.ChatCompletionRequest) -> Plan:
    check_history(req)
    tools = declared_tools(req)
    answer = response_constraint(req.response_format)
    extra = extra_constraint(req)
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    if not tools and choice != "none":
        raise _bad("tool_choice needs tools: declare the functions in `tools`", "tool_choice")
    if req.parallel_tool_calls is not None and not tools:
        raise _bad("parallel_tool_calls needs tools", "parallel_tool_calls")
    callable_tools = tools
    if isinstance(choice, S.NamedToolChoice):
        callable_tools = [t for t in tools if t.name == choice.function.name]
        if not callable_tools:
            raise _bad(f"tool_choice: no tool is named {choice.function.name!r}; declared: "
                       f"{', '.join(t.name for t in tools)}", "tool_choice.function.name")
    if extra is not None:
        if answer is not None:
            raise _bad(f"{extra[1]} and response_format both constrain the answer; give one",
                       extra[1])
        if choice != "none":
            raise _bad(f"{extra[1]} and tools that may be called both constrain the answer; "
                       'give one, or tool_choice: "none"', extra[1])
        return Plan(constraint=extra[0], param=extra[1], tools=tools, free_text=False)
    if choice == "none":
        if answer is None:
            return Plan(tools=tools)
        return Plan(constraint=Constraint.json(answer[0]), param=answer[1], tools=tools,
                    free_text=False)
    parallel = req.parallel_tool_calls is not False
    required = choice != "auto"
    grammar = T.tool_call_grammar(callable_tools, required=required, parallel=parallel,
                                  text_schema=answer[0] if answer else None)
    return Plan(constraint=Constraint.grammar(grammar), param="tools", tools=tools,
                parse_calls=True, free_text=not required and answer is None)


async def compile_plan(plan: Plan, tokenizer) -> None:
    """Compile the plan's constraint now (cached), off the event loop: a schema or grammar the
    engine cannot use is a 400 before the response starts, streamed or not."""
    if plan.constraint is None:
        return
    try:
        await asyncio.to_thread(check_constraint, plan.constraint, tokenizer)
    except ConstraintError as e:
        raise _bad(f"{plan.param}: {e}", plan.param or e.param or "", "invalid_constraint") from None


def tool_call_out(call: T.ToolCall) -> S.ToolCall:
    return S.ToolCall(id=call.id or T.new_call_id(),
                      function=S.FunctionCall(name=call.name, arguments=call.arguments_json()))


def request_messages(req: S.ChatCompletionRequest) -> list[dict]:
    """The request's messages as the templates take them (lyre.chat.tools' form)."""
    out = []
    for m in req.messages:
        msg: dict = {"role": m.role, "content": m.text()}
        if m.tool_calls:
            msg["tool_calls"] = [{"id": c.id, "function": {"name": c.function.name,
                                                           "arguments": c.function.arguments}}
                                 for c in m.tool_calls]
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out
