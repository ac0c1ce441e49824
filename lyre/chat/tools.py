"""Tool calls in text: how tools, calls and results are written into a prompt, the grammar that
makes a model's reply a valid call, and the parser that reads calls back out of the reply.

One format for every chat template (ChatML/Hermes style, as Qwen and NousResearch's Hermes
models write it), the same at fine-tuning time (lyre.finetune renders through the templates)
and when serving:

    the tool list, appended to the system part:

        # Tools

        You may call one or more functions to assist with the user query.
        ...
        <tools>
        {"type": "function", "function": {"name": "get_weather", "description": ..., "parameters": {...}}}
        </tools>
        ...

    an assistant turn that calls tools: its text (if any), then one block per call

        <tool_call>
        {"name": "get_weather", "arguments": {"city": "Paris"}}
        </tool_call>

    a tool turn (role "tool"): the result of one call

        <tool_response>
        {"temperature": 21}
        </tool_response>

JSON is written as json.dumps writes it (", " and ": " separators, non-ASCII kept); the
grammar (`tool_call_grammar`) makes the model write exactly that layout, so what a model is
trained on, what it is prompted with and what constrained decoding lets it write agree.
Torch-free: the server imports this module for every request.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lyre.core.errors import LyreError

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
MAX_PARALLEL_CALLS = 4  # blocks one reply may hold: a small model must not loop on calls
# The layout json.dumps writes; the grammar's JSON follows it (llguidance's x-guidance options).
JSON_LAYOUT = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}

TOOLS_PREAMBLE = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n'
    "</tool_call>"
)


def dumps(value: Any) -> str:
    """JSON as it appears in prompts and calls (one line, non-ASCII kept)."""
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Tool:
    """One declared function: OpenAI's {"type": "function", "function": {...}}."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})

    def declaration(self) -> dict:
        fn: dict[str, Any] = {"name": self.name}
        if self.description:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}

    @staticmethod
    def from_openai(entry: dict) -> Tool:
        """A tool from its OpenAI form (a dict; the server passes its validated model's dump)."""
        fn = entry.get("function", entry)
        params = fn.get("parameters")
        return Tool(fn["name"], fn.get("description") or "",
                    params if params is not None else {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolCall:
    """One call the model made (or an earlier assistant turn holds)."""

    name: str
    arguments: dict
    id: str = ""

    def block(self) -> str:
        return f"{CALL_OPEN}\n{dumps({'name': self.name, 'arguments': self.arguments})}\n{CALL_CLOSE}"

    def arguments_json(self) -> str:
        return dumps(self.arguments)


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


# ----------------------------------------------------------------------------------------------
# Rendering: tool-aware messages -> the plain {"role", "content"} turns a template lays out


def tools_text(tools: Sequence[Tool]) -> str:
    """The tool list, as it is appended to the system part of the prompt."""
    return TOOLS_PREAMBLE.format(tools="\n".join(dumps(t.declaration()) for t in tools))


def assistant_text(message: dict) -> str:
    """The text of an assistant turn: its content, then a block per tool call."""
    content = message.get("content") or ""
    blocks = [call_of(c).block() for c in message.get("tool_calls") or ()]
    return "\n".join(([content] if content else []) + blocks)


def tool_result_text(message: dict) -> str:
    return f"{RESPONSE_OPEN}\n{message.get('content') or ''}\n{RESPONSE_CLOSE}"


def call_of(entry: dict | ToolCall) -> ToolCall:
    """A ToolCall from an assistant message's `tool_calls` entry (OpenAI's form, whose
    `function.arguments` is a JSON string, or already a dict)."""
    if isinstance(entry, ToolCall):
        return entry
    fn = entry.get("function", entry)
    args = fn.get("arguments") or {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise LyreError(f"tool call arguments are not valid JSON ({e.msg})") from None
    if not isinstance(args, dict):
        raise LyreError("tool call arguments must be a JSON object")
    return ToolCall(fn["name"], args, entry.get("id", ""))


def lower_messages(messages: Sequence[dict], tools: Sequence[Tool] = (),
                   default_system: str | None = None) -> list[dict]:
    """Messages with tools, tool calls and tool results -> plain {"role", "content"} messages.

    The tool list joins the system text (after `default_system` when the conversation has no
    system message of its own: a template's preamble stays); an assistant turn's calls become
    blocks after its content; a tool turn keeps role "tool", its content wrapped in
    <tool_response> (each template lays out a tool turn its own way). Messages without any of
    these come out as they went in, so a conversation without tools renders as before.
    """
    out = []
    for m in messages:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            out.append({"role": "assistant", "content": assistant_text(m)})
        elif role == "tool":
            out.append({"role": "tool", "content": tool_result_text(m)})
        else:
            out.append({"role": role, "content": m.get("content") or ""})
    if tools:
        text = tools_text(tools)
        first = next((i for i, m in enumerate(out) if m["role"] in ("system", "developer")), None)
        if first is None:
            system = f"{default_system}\n\n{text}" if default_system else text
            out.insert(0, {"role": "system", "content": system})
        else:
            out[first] = {**out[first], "content": f"{out[first]['content']}\n\n{text}"}
    return out


# ----------------------------------------------------------------------------------------------
# The grammar a reply must follow (llguidance's Lark dialect: %json embeds a JSON schema)


def call_schema(tool: Tool) -> dict:
    """The JSON of one call of `tool`: {"name": <its name>, "arguments": <its parameters>},
    name first (a streamed call names its function before its arguments)."""
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
        "x-guidance": JSON_LAYOUT,
    }


def _lark_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a Lark string literal


def tool_call_grammar(tools: Sequence[Tool], *, required: bool, parallel: bool = True,
                      text_schema: dict | None = None) -> str:
    """The Lark grammar of a reply that calls `tools`.

    required: the reply is tool-call block(s) from its first token (tool_choice "required", or a
    named function when `tools` is that one). Otherwise ("auto") it is either free text (or,
    with `text_schema`, JSON of that schema: response_format) or block(s). Each block is one of
    the tools: its name and that tool's parameters schema. `parallel` False: one block at most.
    """
    if not tools:
        raise LyreError("a tool-call grammar needs at least one tool")
    more = f'("\\n" call){{0,{MAX_PARALLEL_CALLS - 1}}}' if parallel else ""
    lines = [
        "start: calls" if required else "start: answer | calls",
        f"calls: call {more}".rstrip(),
        f"call: {_lark_string(CALL_OPEN + chr(10))} body {_lark_string(chr(10) + CALL_CLOSE)}",
        "body: " + " | ".join(f"tool_{i}" for i in range(len(tools))),
    ]
    lines += [f"tool_{i}: %json {dumps(call_schema(t))}" for i, t in enumerate(tools)]
    if not required:
        if text_schema is not None:
            lines.append(f"answer: %json {dumps(text_schema)}")
        else:
            # Free text that never opens a block: once "<tool_call>" is written, only a
            # call may follow (llguidance's lexemes take & and ~: "and", "not").
            lines.append("answer: TEXT")
            lines.append(f"TEXT: /(?s:.+)/ & ~/(?s:.*){re.escape(CALL_OPEN)}(?s:.*)/")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Parsing: the reply -> its text and its calls

_BLOCK = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.S)


@dataclass
class ParsedReply:
    content: str | None  # the text outside the blocks (None when there is none)
    calls: list[ToolCall]


def parse_tool_calls(text: str, tools: Sequence[Tool] = ()) -> ParsedReply:
    """The tool-call blocks of a reply, and the text around them.

    A block whose JSON does not parse, or names no declared tool (when `tools` are given), is
    left in the text: the reply is then returned as the model wrote it, as vLLM does.
    """
    names = {t.name for t in tools}
    calls, kept, at = [], [], 0
    for match in _BLOCK.finditer(text):
        call = _parse_call(match.group(1), names)
        if call is None:
            continue
        kept.append(text[at:match.start()])
        at = match.end()
        calls.append(call)
    kept.append(text[at:])
    content = "".join(kept).strip() if calls else text
    return ParsedReply(content or None, calls)


def _parse_call(body: str, names: set[str]) -> ToolCall | None:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", {})
    if not isinstance(args, dict) or (names and obj["name"] not in names):
        return None
    return ToolCall(obj["name"], args, new_call_id())


# ----------------------------------------------------------------------------------------------
# Streaming: text pieces -> content pieces and call deltas (name first, then argument fragments)

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*', re.S)


@dataclass
class CallDelta:
    """One piece of a streamed call: `name` and `id` on its first delta, then `arguments` text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class ToolCallStream:
    """Reads a reply as it is generated, and says what can be sent so far.

    Outside a block, text is content (held back only while it could be the start of
    "<tool_call>"); inside, the call's name is sent as soon as it is complete, then the
    arguments' JSON as it comes, less the tail that could be the block's closing "}" and tag.
    `finish()` flushes what is held back. Concatenated, the argument fragments of a call are
    its arguments' JSON text exactly as the model wrote it.
    """

    def __init__(self) -> None:
        self.buffer = ""  # text not yet sent
        self.inside = False
        self.count = 0  # calls opened so far
        self.head_sent = False
        self.sent_args = 0  # characters of the current call's arguments already sent
        self.content_sent = False

    def feed(self, text: str) -> tuple[str, list[CallDelta]]:
        content, deltas = self._read(text)
        return content, _one_per_call(deltas)

    def _read(self, text: str) -> tuple[str, list[CallDelta]]:
        self.buffer += text
        content, deltas = "", []
        while True:
            if not self.inside:
                at = self.buffer.find(CALL_OPEN)
                if at < 0:
                    keep = _partial_suffix(self.buffer, CALL_OPEN)
                    cut = len(self.buffer) - keep
                    content += self._content(self.buffer[:cut])
                    self.buffer = self.buffer[cut:]
                    return content, deltas
                content += self._content(self.buffer[:at])
                self.buffer = self.buffer[at + len(CALL_OPEN):]
                self.inside, self.head_sent, self.sent_args = True, False, 0
                continue
            if not self.head_sent:
                head = _HEAD.match(self.buffer)
                if head is None:
                    if CALL_CLOSE in self.buffer:  # a block without a name: give up on it
                        self.inside = False
                        self.buffer = self.buffer[self.buffer.find(CALL_CLOSE) + len(CALL_CLOSE):]
                        continue
                    return content, deltas
                deltas.append(CallDelta(self.count, new_call_id(), json.loads(head.group(1))))
                self.head_sent = True
                self.buffer = self.buffer[head.end():]
                self.sent_args = 0
            end = self.buffer.find(CALL_CLOSE)
            if end >= 0:  # the block is complete: its arguments end at its last "}"
                args = self.buffer[:end].rstrip()
                args = args[:-1].rstrip() if args.endswith("}") else args
                if len(args) > self.sent_args:
                    deltas.append(CallDelta(self.count, arguments=args[self.sent_args:]))
                self.buffer = self.buffer[end + len(CALL_CLOSE):].lstrip("\n")
                self.inside = False
                self.count += 1
                continue
            # Hold back from the last "}" on: it may be the wrapper's, not the arguments'.
            last = self.buffer.rfind("}")
            safe = last if last >= 0 else len(self.buffer) - _partial_suffix(self.buffer, CALL_CLOSE)
            if safe > self.sent_args:
                deltas.append(CallDelta(self.count, arguments=self.buffer[self.sent_args:safe]))
                self.sent_args = safe
            return content, deltas

    def finish(self) -> str:
        """What is left at the end, as content (an unfinished block is sent as text)."""
        rest = self.buffer if not self.inside else ""
        self.buffer = ""
        return self._content(rest)

    def _content(self, text: str) -> str:
        if self.count and not text.strip():  # whitespace between blocks is layout
            return ""
        return text


def _one_per_call(deltas: list[CallDelta]) -> list[CallDelta]:
    """A call's deltas from one piece of text, joined: clients keep one entry per call index in
    a chunk (the openai SDK's accumulator), and a piece may hold a call's name and the start of
    its arguments at once (several tokens come in one step when a grammar forces them)."""
    out: list[CallDelta] = []
    for d in deltas:
        if out and out[-1].index == d.index and d.name is None:
            out[-1].arguments += d.arguments
        else:
            out.append(d)
    return out


def _partial_suffix(text: str, tag: str) -> int:
    """How many trailing characters of `text` are a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
