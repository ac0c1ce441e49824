"""`lyre agent`: a question answered by a model that may call tools (lyre.agent, docs/agent.md).

    lyre agent runs/calc "What is 48,213 times 371?" --tools calculator
    lyre agent --llm-url http://localhost:8000 --llm-model calc "..." --tools calculator,sql:shop.sqlite
    lyre agent runs/calc "..." --tools calculator --trace trace.jsonl --json

The answer streams to stdout; each call and its result is shown on stderr as it happens
([call] / [result] / [error] lines), so `> answer.txt` keeps only the answer. --json prints one
object instead: {"answer", "stopped", "steps": [{"name", "arguments", "result", "error", ...}],
"model_calls", "tool_errors", "notices"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lyre.cli.flags import add_checkpoint_flags, add_threads_flag, apply_threads
from lyre.core.errors import LyreError


class _Intermixed:
    """A parser mixin: positionals may come after options (`lyre agent RUN --tools calculator
    "question"`). argparse alone gives a run of positionals to every positional it can at once,
    so RUN would take the question's place; parse_known_intermixed_args reads options first."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def register(sub) -> None:
    # The subparsers action builds each verb's parser with its parser class (argparse's
    # `_parser_class`); this verb's gets the intermixed parsing.
    base = sub._parser_class
    sub._parser_class = type("AgentParser", (_Intermixed, base), {})
    try:
        _add_agent(sub)
    finally:
        sub._parser_class = base


def _add_agent(sub) -> None:
    p = sub.add_parser("agent", help="answer a question with a model that calls tools",
                       description="Answer a question with a model that may call tools: the model "
                                   "asks for calls, lyre runs them and gives it the results, "
                                   "until it answers (or --max-steps). Built-in tools: calculator, "
                                   "search:INDEX (a `lyre rag` index), sql:DB.sqlite (read-only). "
                                   "See docs/agent.md.")
    p.add_argument("run_dir", nargs="?", type=Path, default=None,
                   help="run directory (or --llm-url and --llm-model)")
    p.add_argument("question", help="what to answer")
    p.add_argument("--tools", default=None, metavar="LIST",
                   help="comma-separated: calculator, search:INDEX, sql:DB.sqlite (default: none)")
    p.add_argument("--max-steps", type=int, default=8,
                   help="model calls that may call tools before the agent gives up (default 8)")
    p.add_argument("--trace", type=Path, default=None, metavar="FILE",
                   help="append every event (model calls, tokens, tool calls) to FILE as JSON lines")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (answer, steps, stopped) instead of the text")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--tool-choice", default="auto", metavar="CHOICE",
                   help="auto (default: the model decides), required, none, or a tool's name")
    p.add_argument("--max-tokens", type=int, default=512, help="tokens per model call (default 512)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--seed", type=int, default=0, help="random seed (with --temperature > 0)")
    p.add_argument("--template", default=None, help="chat template of RUN (default: the run's)")
    g = p.add_argument_group("a model served elsewhere (instead of RUN)")
    g.add_argument("--llm-url", default=None, metavar="URL",
                   help="an OpenAI-compatible server: lyre serve, vLLM, Ollama, llama.cpp, OpenAI")
    g.add_argument("--llm-model", default=None, metavar="NAME", help="the model name on that server")
    g.add_argument("--api-key", default=None, help="API key for --llm-url")
    add_checkpoint_flags(p)
    add_threads_flag(p)
    p.set_defaults(func=cmd_agent)


class StepPrinter:
    """Each call and its result on stderr, as they happen (a lyre.rag.callbacks handler)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr

    def on_tool_start(self, name, arguments, **kw) -> None:
        print(f"[call] {name}({arguments})", file=self.stream, flush=True)

    def on_tool_end(self, output, **kw) -> None:
        label = "[error]" if kw.get("error") else "[result]"
        text = output if len(output) <= 500 else output[:500] + " ..."
        print(f"{label} {text}", file=self.stream, flush=True)


def cmd_agent(args) -> None:
    from lyre.agent import Agent, open_chat_model, parse_tools
    from lyre.rag.callbacks import JSONLTracer

    if args.run_dir is not None and args.llm_url is not None:
        raise LyreError("give a run directory or --llm-url, not both")
    if args.run_dir is None and args.llm_url is None:
        raise LyreError("give a run directory, or --llm-url URL with --llm-model NAME")
    if args.llm_url is not None and not args.llm_model:
        raise LyreError("--llm-url needs --llm-model NAME (the model name on that server)")
    if args.max_steps < 1:
        raise LyreError(f"--max-steps must be at least 1; got {args.max_steps}")
    if args.max_tokens < 1:
        raise LyreError(f"--max-tokens must be at least 1; got {args.max_tokens}")
    if not args.question.strip():
        raise LyreError("the question is empty")
    tools = parse_tools(args.tools) if args.tools is not None else []
    apply_threads(args.threads)
    handlers: list = [] if args.json else [StepPrinter()]
    tracer = JSONLTracer(args.trace) if args.trace else None
    if tracer is not None:
        handlers.append(tracer)
    llm = open_chat_model(args.run_dir, url=args.llm_url, model=args.llm_model,
                          api_key=args.api_key, template=args.template,
                          checkpoint=args.checkpoint, device=args.device,
                          max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    agent = Agent(llm, tools, max_steps=args.max_steps, callbacks=handlers, system=args.system,
                  tool_choice=args.tool_choice)

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        result = agent.run(args.question, on_token=None if args.json else write)
    finally:
        if tracer is not None:
            tracer.close()
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    if result.answer:
        write("\n")
    for notice in result.notices:
        print(f"[notice] {notice}", file=sys.stderr)
