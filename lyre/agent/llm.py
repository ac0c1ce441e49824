"""The model an agent talks to: a lyre run in this process, or any OpenAI-compatible server.

Both speak one small protocol, all the loop needs:

    model.chat(messages, tools, tool_choice="auto", on_token=None) -> Reply(content, calls, finish_reason)

`messages` are OpenAI chat messages (assistant messages may carry `tool_calls`, `tool`
messages a `tool_call_id`); `tools` the declarations (lyre.chat.tools.Tool). The reply is either
text (the answer, streamed piece by piece through `on_token`) or calls to make.

In process (`EngineChat`) is what `lyre serve` does for a chat request with tools, without
HTTP: the run's chat template renders the conversation with the tool list, and constrained
decoding (lyre.chat.tools.tool_call_grammar) lets the model either answer in text or write
<tool_call> blocks that name a declared tool with arguments of its schema, so even a tiny model
makes valid calls. Over HTTP (`OpenAIChat`) the server does the same on its side (lyre serve,
vLLM, Ollama, llama.cpp, OpenAI) and the streamed `delta.tool_calls` are put back together.
`open_chat_model` opens either from a run directory or a URL and a model name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lyre.chat.tools import CALL_OPEN
from lyre.chat.tools import Tool as ToolSpec
from lyre.core.errors import LyreError
from lyre.core.openai_client import EndpointError, OpenAIClient, RetryPolicy

TokenFn = Callable[[str], None]
DEFAULT_MAX_TOKENS = 512  # per model call; a call or a short answer needs far fewer
ToolChoice = str  # "auto" | "required" | "none" | the name of one tool


class ContextFull(LyreError):
    """The conversation no longer fits the model's context (the loop stops with a notice)."""


@dataclass
class Call:
    """A call the model asked for. `arguments` is the JSON text as the model wrote it (it may
    not parse: the loop answers that as a tool error)."""

    id: str
    name: str
    arguments: str

    def message_entry(self) -> dict:
        """The call in an assistant message (OpenAI's form)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Reply:
    content: str | None
    calls: list[Call] = field(default_factory=list)
    finish_reason: str | None = "stop"


class ChatModel(Protocol):
    name: str
    max_tokens: int

    def chat(self, messages: list[dict], tools: Sequence[ToolSpec], tool_choice: ToolChoice = "auto",
             on_token: TokenFn | None = None) -> Reply: ...


def check_tool_choice(tool_choice: ToolChoice, tools: Sequence[ToolSpec]) -> None:
    names = [t.name for t in tools]
    if tool_choice in ("auto", "required", "none") or tool_choice in names:
        if tool_choice != "none" and tool_choice != "auto" and not tools:
            raise LyreError(f"tool_choice {tool_choice!r} needs tools")
        return
    raise LyreError(f"tool_choice must be auto, required, none or a tool's name "
                    f"({', '.join(names) or 'no tools'}); got {tool_choice!r}")


# ----------------------------------------------------------------------------------------------
# In process: a run's template, the tool-call grammar, the engine


class RunChat:
    """A run's side of a tool-aware chat turn: the prompt ids, the sampling (with the
    tool-call constraint) and the reading of the reply. EngineChat runs it with the engine;
    the server's chat page (lyre.serve.routes.agent) runs it through its scheduler."""

    def __init__(self, tokenizer, template, block_size: int, name: str = "run", *,
                 max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0,
                 seed: int | None = 0) -> None:
        self.tokenizer, self.template, self.block_size = tokenizer, template, block_size
        self.name, self.max_tokens = name, max_tokens
        self.temperature, self.seed = temperature, seed

    def request(self, messages: list[dict], tools: Sequence[ToolSpec],
                tool_choice: ToolChoice = "auto"):
        """(prompt ids, SamplingConfig) for one model call; ContextFull when it cannot fit."""
        from lyre.chat.tools import tool_call_grammar
        from lyre.constrain import Constraint, check_constraint
        from lyre.engine import SamplingConfig

        check_tool_choice(tool_choice, tools)
        offered = tools if tool_choice != "none" else []
        prompt = self.template.render(readable_results(messages, self.tokenizer), tools)
        ids = self.tokenizer.encode(prompt) if prompt else [self.tokenizer.eot_id]
        room = self.block_size - len(ids)
        if room < 8:  # not even room for a short answer
            raise ContextFull(f"the conversation ({len(ids)} tokens with the tool list) does not "
                              f"fit {self.name}'s context of {self.block_size} tokens")
        constraint = None
        if offered:
            only = [t for t in offered if t.name == tool_choice] or list(offered)
            grammar = tool_call_grammar(only, required=tool_choice not in ("auto",))
            constraint = Constraint.grammar(grammar)
            check_constraint(constraint, self.tokenizer)
        free_text = not offered or tool_choice == "auto"
        params = SamplingConfig(
            max_new_tokens=min(self.max_tokens, room), temperature=self.temperature, top_k=0,
            top_p=1.0, seed=self.seed, overflow="stop", constraint=constraint,
            # A call's JSON could hold a stop string; only free text ends at the template's.
            stop=tuple(self.template.stop) if free_text else ())
        return ids, params

    def reader(self, tools: Sequence[ToolSpec]) -> ReplyReader:
        return ReplyReader(tools, self.template.strip_answer)


class ReplyReader:
    """Raw text pieces in, content pieces out (calls held back); `finish` gives the Reply."""

    def __init__(self, tools: Sequence[ToolSpec], strip: bool = True) -> None:
        from lyre.chat.templates import AnswerTrimmer
        from lyre.chat.tools import ToolCallStream

        self.tools = list(tools)
        self.stream = ToolCallStream() if tools else None
        self.trimmer = AnswerTrimmer(strip)
        self.raw: list[str] = []

    def feed(self, raw: str) -> str:
        self.raw.append(raw)
        text = self.stream.feed(raw)[0] if self.stream is not None else raw
        return self.trimmer.feed(text)

    def finish(self, finish_reason: str | None) -> tuple[str, Reply]:
        """(the last content piece, the reply)."""
        from lyre.chat.tools import parse_tool_calls

        rest = self.trimmer.feed(self.stream.finish()) if self.stream is not None else ""
        text = "".join(self.raw)
        if not self.tools:
            return rest, Reply(text.strip(), [], finish_reason)
        parsed = parse_tool_calls(text, self.tools)
        calls = [Call(c.id, c.name, c.arguments_json()) for c in parsed.calls]
        content = (parsed.content or "").strip() or None
        if content and CALL_OPEN in content:  # a block cut short (max_tokens): not an answer
            content = content[:content.index(CALL_OPEN)].strip() or None
        return rest, Reply(content if calls else (content or ""), calls, finish_reason)


class EngineChat(RunChat):
    """A lyre run answering in this process (`lyre agent RUN`)."""

    def __init__(self, run, *, template: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                 temperature: float = 0.0, seed: int | None = 0) -> None:
        from lyre.chat.templates import get_template, template_name_for_run
        from lyre.engine import Engine
        from lyre.generate.runs import load_run

        if isinstance(run, str | Path):
            run = load_run(run)
        engine = Engine(run.model, run.tokenizer, device=run.device)
        # The engine's context: a recurrent run has none (its state does not grow with the text).
        super().__init__(run.tokenizer, get_template(template or template_name_for_run(run.run_dir)),
                         engine.block_size, Path(run.run_dir).name,
                         max_tokens=max_tokens, temperature=temperature, seed=seed)
        self.run = run
        self.engine = engine

    def chat(self, messages: list[dict], tools: Sequence[ToolSpec], tool_choice: ToolChoice = "auto",
             on_token: TokenFn | None = None) -> Reply:
        ids, params = self.request(messages, tools, tool_choice)
        reader = self.reader(tools if tool_choice != "none" else [])
        stream = self.engine.stream(ids, params)
        for raw in stream:
            piece = reader.feed(raw)
            if piece and on_token is not None:
                on_token(piece)
        rest, reply = reader.finish(stream.completion.finish_reason)
        if rest and on_token is not None:
            on_token(rest)
        return reply


# ----------------------------------------------------------------------------------------------
# Over HTTP: any OpenAI-compatible server


class OpenAIChat:
    """`POST /v1/chat/completions` with `tools`, `tool_choice` and `stream: true`.

    base_url: the server with or without /v1. The server is asked once, now, whether it is up
    and serves `model` (GET /v1/models), so that a wrong URL fails before the question is sent.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
                 max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0,
                 seed: int | None = 0, timeout: float = 120.0, retry: RetryPolicy | None = None,
                 transport=None) -> None:
        if not model:
            raise LyreError("--llm-model is empty; give the model name the server serves")
        self.client = OpenAIClient(base_url, api_key, timeout=timeout, retry=retry,
                                   what="--llm-url", transport=transport)
        self.name, self.max_tokens = model, max_tokens
        self.temperature, self.seed = temperature, seed
        self._check_model()

    def _check_model(self) -> None:
        try:
            r = self.client.request("GET", "/models")
        except EndpointError as e:
            raise _unreachable(e) from None
        if r.status_code in (401, 403):
            raise LyreError(f"{self.client.api} refused the API key ({r.status_code}); "
                            "pass the right one with --api-key")
        try:
            names = [m["id"] for m in r.json()["data"]] if r.status_code == 200 else []
        except (ValueError, KeyError, TypeError):
            names = []
        if names and self.name not in names:
            raise LyreError(f"{self.client.api} does not serve the model {self.name!r}; it "
                            f"serves {', '.join(names[:5])}")

    def body(self, messages: list[dict], tools: Sequence[ToolSpec], tool_choice: ToolChoice) -> dict:
        body: dict = {"model": self.name, "messages": messages, "stream": True,
                      "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.seed is not None:
            body["seed"] = self.seed
        if tools:
            body["tools"] = [t.declaration() for t in tools]
            body["tool_choice"] = tool_choice if tool_choice in ("auto", "required", "none") \
                else {"type": "function", "function": {"name": tool_choice}}
        return body

    def chat(self, messages: list[dict], tools: Sequence[ToolSpec], tool_choice: ToolChoice = "auto",
             on_token: TokenFn | None = None) -> Reply:
        check_tool_choice(tool_choice, tools)
        url = f"{self.client.api}/chat/completions"
        try:
            with self.client.stream("POST", url, json=self.body(messages, tools, tool_choice)) as r:
                if r.status_code >= 400:
                    r.read()
                    raise _refused(r)
                return _read_stream(r.iter_lines(), url, on_token)
        except EndpointError as e:
            raise _unreachable(e) from None

    def close(self) -> None:
        self.client.close()


def _read_stream(lines, url: str, on_token: TokenFn | None) -> Reply:
    """The server-sent events of a chat completion -> the Reply; a server that ignored
    `stream: true` and answered one JSON object is read too."""
    content: list[str] = []
    calls: dict[int, dict] = {}
    finish: str | None = None
    other: list[str] = []
    for line in lines:
        if not line.startswith("data:"):
            if line.strip() and not line.startswith(":"):
                other.append(line)
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        choice = _choice(data, url)
        if choice is None:
            continue
        delta = choice.get("delta") or {}
        piece = delta.get("content")
        if isinstance(piece, str) and piece:
            content.append(piece)
            if on_token is not None:
                on_token(piece)
        for d in delta.get("tool_calls") or ():
            call = calls.setdefault(d.get("index", len(calls)), {"id": "", "name": "", "arguments": ""})
            fn = d.get("function") or {}
            call["id"] = d.get("id") or call["id"]
            call["name"] = fn.get("name") or call["name"]
            call["arguments"] += fn.get("arguments") or ""
        finish = choice.get("finish_reason") or finish
    if not content and not calls and other:
        return _whole_reply("\n".join(other), url, on_token)
    text = "".join(content).strip()
    made = [Call(c["id"] or f"call_{i}", c["name"], c["arguments"] or "{}")
            for i, c in sorted(calls.items())]
    if finish == "length":  # the token limit cut the last call short: only whole calls count
        made = [c for c in made if _is_json(c.arguments)]
    return Reply(text or (None if made else ""), made, finish)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _choice(data: str, url: str) -> dict | None:
    try:
        obj = json.loads(data)
    except ValueError:
        raise LyreError(f"{url} streamed something that is not JSON ({data[:60]!r}); "
                        "is it an OpenAI-compatible server?") from None
    if isinstance(obj, dict) and "error" in obj:
        err = obj["error"]
        raise LyreError(f"the LLM endpoint failed mid-answer: "
                        f"{err.get('message') if isinstance(err, dict) else err}")
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list):
        raise LyreError(f"{url} streamed a chunk without choices ({data[:60]!r}); "
                        "is it an OpenAI-compatible server?")
    return choices[0] if choices and isinstance(choices[0], dict) else None


def _whole_reply(body: str, url: str, on_token: TokenFn | None) -> Reply:
    try:
        choice = json.loads(body)["choices"][0]
        message = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise LyreError(f"{url} answered something that is not an OpenAI chat completion "
                        f"({body[:60]!r}); is it an OpenAI-compatible server?") from None
    calls = [Call(c.get("id") or f"call_{i}", c["function"]["name"],
                  c["function"].get("arguments") or "{}")
             for i, c in enumerate(message.get("tool_calls") or ())]
    text = (message.get("content") or "").strip()
    if text and on_token is not None:
        on_token(text)
    return Reply(text or (None if calls else ""), calls, choice.get("finish_reason"))


def _refused(r) -> LyreError:
    """A 4xx/5xx answer: a one-line error (ContextFull for a prompt too long)."""
    from lyre.core.openai_client import error_detail

    detail = error_detail(r).removeprefix(": ")
    try:
        code = (r.json().get("error") or {}).get("code")
    except (ValueError, AttributeError):
        code = None
    if code == "context_length_exceeded":
        return ContextFull(f"the conversation no longer fits the model's context ({detail})")
    return LyreError(f"the LLM endpoint answered {r.status_code}: {detail or r.reason_phrase}")


def _unreachable(e: EndpointError) -> LyreError:
    if e.status is not None:
        return LyreError(f"the LLM endpoint answered {e.reason.removeprefix('HTTP ')}")
    return LyreError(f"cannot reach the LLM endpoint {e.url} ({e.reason}); "
                     "is the server running and the URL right?")


# ----------------------------------------------------------------------------------------------


def readable_results(messages: list[dict], tokenizer) -> list[dict]:
    """Tool results as the model can read them. A char-level run replaces the characters it never
    saw (a tool's error text may hold a quote its corpus lacked) instead of failing the loop: the
    text comes from a tool, not from the user, whose own text follows the run's rule
    (--replace-unknown)."""
    if not hasattr(tokenizer, "count_unknown"):  # byte-level tokenizers read every text
        return messages
    if getattr(tokenizer, "unk", None) is not None:  # it replaces unknown characters itself
        return messages
    out = []
    for m in messages:
        content = m.get("content")
        if m.get("role") == "tool" and isinstance(content, str) and tokenizer.count_unknown(content):
            m = {**m, "content": tokenizer.decode(tokenizer.encode(content, unknown="replace"))}
        out.append(m)
    return out


def open_chat_model(run: str | Path | None = None, *, url: str | None = None,
                    model: str | None = None, api_key: str | None = None,
                    template: str | None = None, checkpoint: str = "best", device: str = "auto",
                    max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0,
                    seed: int | None = 0, replace_unknown: bool = False) -> EngineChat | OpenAIChat:
    """A run directory (in process) or an OpenAI-compatible server (`url` + `model`).
    `replace_unknown`: a char-level run replaces characters it never saw (the tool list's `#`,
    `{`) instead of refusing them, as --replace-unknown does for lyre chat."""
    if (run is None) == (url is None):
        raise LyreError("give a run directory, or --llm-url URL with --llm-model NAME (not both)")
    if url is not None:
        return OpenAIChat(url, model or "", api_key, max_tokens=max_tokens,
                          temperature=temperature, seed=seed)
    from lyre.generate.runs import load_run

    loaded = load_run(run, checkpoint, device)
    if replace_unknown:
        from lyre.tokenizers.char import replace_unknown as replacing

        replacing(loaded.tokenizer)
    return EngineChat(loaded, template=template, max_tokens=max_tokens, temperature=temperature,
                      seed=seed)
