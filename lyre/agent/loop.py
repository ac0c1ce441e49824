"""The agent loop: ask the model, run the calls it asks for, give it the results, repeat.

    agent = Agent(open_chat_model("runs/calc"), tools=[builtin_tool("calculator")])
    result = agent.run("What is 48,213 times 371?")
    result.answer      # the model's final text
    result.steps       # every call: name, arguments, result, error
    result.stopped     # "answer", or why there is none: "max_steps", "length", "context"

One turn of the loop is one model call with the tools (tool_choice "auto"): the model either
answers in text (the loop ends, the answer streamed through `on_token`) or asks for calls.
Then the assistant message with its `tool_calls` joins the conversation, each call runs (under
its tool's time limit) and its result joins as a `tool` message with the call's
`tool_call_id`, in OpenAI's format, which is what every OpenAI-compatible server and every
lyre chat template reads. After `max_steps` turns that still call tools, the loop stops with a
notice instead of an answer.

A call that cannot run is never a crash: an undeclared tool, arguments that are not JSON or do
not match the tool's schema, a tool that raises or runs out of time; its error text goes back
to the model as the call's result (it may try again) and the step is marked `error`.

Every step is reported through lyre.rag.callbacks (the handlers `lyre rag` uses: JSONLTracer
for `--trace FILE`, ProgressPrinter): a chain "agent", one llm run per model call, one tool run
per call (on_tool_start(name, arguments) / on_tool_end(output, error=...)).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lyre.agent.llm import ChatModel, ContextFull, Reply, TokenFn, check_tool_choice
from lyre.agent.tools import Tool, ToolError
from lyre.core.errors import LyreError
from lyre.rag.callbacks import Callbacks, Run, as_callbacks

DEFAULT_MAX_STEPS = 8


@dataclass
class Step:
    """One tool call and its result."""

    name: str
    arguments: dict | str  # as parsed; the raw text when it was not a JSON object
    result: str  # what went back to the model
    error: bool  # the call failed (its result is the error text)
    call_id: str
    turn: int  # the model call (1-based) that asked for it
    elapsed_s: float = 0.0


@dataclass
class AgentResult:
    answer: str
    steps: list[Step]
    stopped: str  # "answer" | "max_steps" | "length" (answer cut short) | "context" (full)
    messages: list[dict]  # the whole conversation, tool calls and results included
    model_calls: int
    notices: list[str] = field(default_factory=list)

    @property
    def tool_errors(self) -> int:
        return sum(s.error for s in self.steps)

    def to_dict(self) -> dict:
        """The `lyre agent --json` object."""
        return {"answer": self.answer, "stopped": self.stopped,
                "steps": [asdict(s) for s in self.steps], "model_calls": self.model_calls,
                "tool_errors": self.tool_errors, "notices": self.notices}


def run_with_time_limit(fn: Callable[[], Any], seconds: float) -> Any:
    """fn() in a thread of its own; ToolError when it has not returned within `seconds`.

    A Python thread cannot be killed: a tool that hangs is left behind (a daemon thread that
    dies with the process) and the loop goes on. The built-in tools stop themselves (the SQL
    tool interrupts its query at its own limit); this is the bound for every other tool.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="lyre-agent-tool", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ToolError(f"the call took longer than {seconds:g} s; it was abandoned")
    if "error" in box:
        raise box["error"]
    return box["value"]


class Agent:
    """A model that may call `tools` to answer (the loop above).

    llm: a lyre.agent.llm.ChatModel (EngineChat in process, OpenAIChat over HTTP;
    open_chat_model opens either). tools: Tool objects (`@tool` functions, builtin_tool(...)).
    callbacks: handlers or a lyre.rag.callbacks.Callbacks. system: a system message.
    tool_choice: "auto" (the model decides), "required", "none" or a tool's name; or one per
    model call, the last repeating: ("required", "none") makes one round of calls, then the
    answer (a weak model that would not call by itself still runs the loop).
    """

    def __init__(self, llm: ChatModel, tools: Sequence[Tool] = (), *,
                 max_steps: int = DEFAULT_MAX_STEPS, callbacks: Any = None,
                 system: str | None = None, tool_choice: str | Sequence[str] = "auto") -> None:
        if max_steps < 1:
            raise LyreError(f"--max-steps must be at least 1; got {max_steps}")
        self.llm, self.tools = llm, list(tools)
        self.by_name: dict[str, Tool] = {}
        for t in self.tools:
            if not isinstance(t, Tool):
                raise LyreError(f"{t!r} is not a tool; decorate the function with @tool")
            if t.name in self.by_name:
                raise LyreError(f"two tools are named {t.name!r}; tool names must be unique")
            self.by_name[t.name] = t
        self.specs = [t.spec() for t in self.tools]
        choices = [tool_choice] if isinstance(tool_choice, str) else list(tool_choice)
        if not choices:
            raise LyreError("tool_choice is an empty list; give at least one")
        for choice in choices:
            check_tool_choice(choice, self.specs)
        self.max_steps, self.system, self.tool_choice = max_steps, system, tool_choice
        self.choices = choices
        self.callbacks: Callbacks = as_callbacks(callbacks)

    def run(self, question: str, *, history: Sequence[dict] = (),
            on_token: TokenFn | None = None) -> AgentResult:
        """Answer `question` (after the earlier `history` messages, if any; the agent's system
        message goes first unless the history has one)."""
        if not isinstance(question, str) or not question.strip():
            raise LyreError("the question is empty")
        has_system = any(m.get("role") in ("system", "developer") for m in history)
        messages = ([{"role": "system", "content": self.system}] if self.system and not has_system
                    else []) + [dict(m) for m in history] + [{"role": "user", "content": question}]
        steps: list[Step] = []
        cb = self.callbacks
        with cb.run("chain", None, ("agent", {"question": question,
                                             "tools": [t.name for t in self.tools]})) as chain:
            result = self._loop(messages, steps, chain, on_token)
            chain.emit("on_chain_end", {"answer": result.answer, "stopped": result.stopped,
                                        "steps": len(steps), "tool_errors": result.tool_errors},
                       elapsed_s=chain.elapsed())
        return result

    def _loop(self, messages: list[dict], steps: list[Step], chain: Run,
              on_token: TokenFn | None) -> AgentResult:
        sent = 0  # messages the model has seen (the trace shows only the new ones)
        for turn in range(1, self.max_steps + 1):
            try:
                reply = self._ask(messages, messages[sent:], turn, chain, on_token)
            except ContextFull as e:
                if turn == 1:
                    raise
                return self._result("", steps, "context", messages, turn - 1,
                                    [f"stopped after {turn - 1} model calls: {e}"])
            sent = len(messages)
            if not reply.calls:
                text = reply.content or ""
                messages.append({"role": "assistant", "content": text})
                if reply.finish_reason == "length":
                    return self._result(text, steps, "length", messages, turn,
                                        ["the reply was cut short: the model reached its token "
                                         "limit (--max-tokens) or the end of its context"])
                return self._result(text, steps, "answer", messages, turn)
            messages.append({"role": "assistant", "content": reply.content,
                             "tool_calls": [c.message_entry() for c in reply.calls]})
            for call in reply.calls:
                step = self._call(call, turn, chain)
                steps.append(step)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": step.result})
        return self._result("", steps, "max_steps", messages, self.max_steps,
                            [f"no answer after {self.max_steps} steps: the model kept calling "
                             "tools (raise --max-steps, or ask a simpler question)"])

    @staticmethod
    def _result(answer: str, steps: list[Step], stopped: str, messages: list[dict],
                calls: int, notices: list[str] | None = None) -> AgentResult:
        return AgentResult(answer, steps, stopped, messages, calls, notices or [])

    def _ask(self, messages: list[dict], new: list[dict], turn: int, chain: Run,
             on_token: TokenFn | None) -> Reply:
        """One model call, reported as an llm run (its tokens too)."""
        prompt = (new[-1].get("content") or "") if new else ""
        with self.callbacks.run("llm", chain, (prompt, self.llm.max_tokens),
                                {"step": turn, "messages": new}) as run:

            def token(piece: str) -> None:
                run.emit("on_llm_new_token", piece)
                if on_token is not None:
                    on_token(piece)

            choice = self.choices[min(turn, len(self.choices)) - 1]
            reply = self.llm.chat(messages, self.specs, choice, token)
            run.emit("on_llm_end", reply.content or "", elapsed_s=run.elapsed(),
                     tool_calls=[c.message_entry() for c in reply.calls],
                     finish_reason=reply.finish_reason)
        return reply

    def _call(self, call, turn: int, chain: Run) -> Step:
        """Run one call; whatever goes wrong becomes its result text, marked as an error."""
        arguments: dict | str = call.arguments
        with self.callbacks.run("tool", chain, (call.name, call.arguments),
                                {"call_id": call.id, "step": turn}) as run:
            try:
                tool = self.by_name.get(call.name)
                if tool is None:
                    raise ToolError(f"there is no tool {call.name!r}; the tools are "
                                    f"{', '.join(self.by_name) or 'none'}")
                arguments = _parse_arguments(call.arguments)
                result = run_with_time_limit(lambda: tool.invoke(arguments), tool.timeout_s)
                error = False
            except ToolError as e:
                result, error = f"Error: {e}", True
            except Exception as e:  # the tool's own failure: the model hears it, the loop goes on
                result, error = f"Error: {type(e).__name__}: {e}", True
            run.emit("on_tool_end", result, error=error, call_id=call.id, elapsed_s=run.elapsed())
        return Step(call.name, arguments, result, error, call.id, turn, round(run.elapsed(), 6))


def _parse_arguments(text: str) -> dict:
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise ToolError(f"the arguments are not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise ToolError("the arguments must be a JSON object")
    return value
