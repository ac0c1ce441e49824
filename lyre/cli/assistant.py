"""Verbs that talk to a model: `chat` (terminal) and `serve` (OpenAI-compatible HTTP API and
chat page)."""

from __future__ import annotations

from pathlib import Path

from lyre.cli.flags import (
    add_constraint_flags,
    add_model_flags,
    add_replace_unknown_flag,
    add_sampling_flags,
    add_threads_flag,
    apply_threads,
    constraint_from_args,
)
from lyre.core.errors import LyreError
from lyre.core.sampling_defaults import DEFAULT_MAX_NEW_TOKENS


def register(sub) -> None:
    _add_chat(sub)
    _add_serve(sub)


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="talk to a run in the terminal",
                       description="A terminal chat with a run, streamed. A base model continues your "
                                   "text; a chat model uses its prompt template. /help inside lists commands.")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("-p", "--prompt", dest="one_prompt", metavar="TEXT",
                   help="answer TEXT once and exit (for scripts)")
    p.add_argument("--system", default=None, help="system message (chat templates)")
    p.add_argument("--template", default=None,
                   help="prompt template: plain | alpaca | chatml | simple (default: the run's, else plain)")
    p.add_argument("--history", default=None, metavar="FILE",
                   help="file of the lines you typed, for the arrow keys and Ctrl-R (default: "
                        "$LYRE_HISTORY, else ~/.local/state/lyre/chat_history; '' keeps none)")
    add_sampling_flags(p, max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
    add_constraint_flags(p)
    p.add_argument("--tools", default=None, metavar="LIST",
                   help="answer through the agent loop with these tools: calculator, "
                        "search:INDEX, sql:DB.sqlite, comma-separated (docs/agent.md)")
    p.add_argument("--max-steps", type=int, default=8,
                   help="with --tools: model calls that may call tools per answer (default 8)")
    add_replace_unknown_flag(p)
    add_model_flags(p)
    p.set_defaults(func=cmd_chat)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server and chat page",
                       description="Serve a run over HTTP: the OpenAI API under /v1, a chat page at /, "
                                   "/health, Prometheus metrics at /metrics, the API's documentation "
                                   "at /docs (works offline). A classifier run serves POST "
                                   "/v1/classify instead (docs/classify.md). One access-log line per "
                                   "request at --log-level info. See docs/serve.md.")
    p.add_argument("run_dir", type=Path, help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on /v1 (default: $LYRE_API_KEY, else none)")
    p.add_argument("--model-name", default=None, help="model id in the API (default: the run directory's name)")
    p.add_argument("--template", default=None, help="chat prompt template (default: the run's, else plain)")
    p.add_argument("--max-batch", type=int, default=32, help="choices decoded together (default 32)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting before 429 (default 64)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="seconds in-flight requests get to finish on SIGTERM (default 10)")
    p.add_argument("--context-overflow", default="stop", choices=["stop", "slide"],
                   help="at the end of the context: stop with finish_reason length (default, as "
                        "OpenAI) or slide the window and keep generating")
    add_replace_unknown_flag(p)
    p.add_argument("--read-timeout", type=float, default=30.0,
                   help="seconds a client gets to send a request's headers, and again its body; "
                        "slower clients get 408 and are disconnected (default 30)")
    add_model_flags(p)
    p.add_argument("--rag", default=None, metavar="IDX",
                   help="also answer POST /v1/rag/answer from this index and enable the chat page's"
                        " 'use my documents' switch (docs/rag.md)")
    p.add_argument("--rag-embedder", default=None, metavar="SPEC",
                   help="embedder of the --rag index's vectors (default none: BM25)")
    p.add_argument("--tools", default=None, metavar="LIST",
                   help="tools the server runs for the chat page (POST /v1/agent/answer): "
                        "calculator, search:INDEX, sql:DB.sqlite, comma-separated; the OpenAI "
                        "API is unchanged (its clients run their own tools)")
    add_threads_flag(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)


def cmd_chat(args) -> None:
    from lyre.chat import repl
    from lyre.chat import templates as chat
    from lyre.generate.runs import load_run
    from lyre.tokenizers.char import replace_unknown

    settings = chat.ChatSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty,
                            max_new_tokens=args.max_new_tokens, seed=args.seed)
    settings.validate()
    constraint = constraint_from_args(args)  # every answer of the chat follows it
    tools = None
    if args.tools is not None:
        from lyre.agent import parse_tools

        if constraint is not None:
            raise LyreError("--tools and a constraint (--json-schema, --regex, ...) both shape "
                            "the answer; give one")
        if args.max_steps < 1:
            raise LyreError(f"--max-steps must be at least 1; got {args.max_steps}")
        tools = parse_tools(args.tools)  # an unknown tool or a missing index fails now
    template = chat.get_template(args.template or chat.template_name_for_run(args.run_dir))
    run = load_run(args.run_dir, args.checkpoint, args.device, weights=args.weights)
    if args.replace_unknown:
        replace_unknown(run.tokenizer)
    if tools is not None:
        from lyre.agent.chat import AgentChatSession

        session = AgentChatSession(run, template, tools, settings, system=args.system,
                                   max_steps=args.max_steps)
    else:
        session = chat.ChatSession(run, template, settings, system=args.system,
                                   constraint=constraint)
    if args.one_prompt is not None:
        repl.one_answer(session, args.one_prompt)
    else:
        repl.run_repl(session, history=repl.history_path(args.history))


def cmd_serve(args) -> None:
    import os

    from lyre.serve import ServeSettings

    settings = ServeSettings(model_name=args.model_name, api_key=args.api_key or os.environ.get("LYRE_API_KEY"),
                             max_batch=args.max_batch, max_queue=args.max_queue,
                             max_body_bytes=args.max_body_bytes, chat_template=args.template,
                             shutdown_timeout=args.shutdown_timeout, overflow=args.context_overflow,
                             read_timeout=args.read_timeout,
                             rag_index=args.rag, rag_embedder=args.rag_embedder,
                             tools=args.tools)
    settings.validate()
    apply_threads(args.threads)
    from lyre.classify.predict import Classifier
    from lyre.serve.app import load_served
    from lyre.serve.server import run_server

    run = load_served(args.run_dir, args.checkpoint, args.device, weights=args.weights)
    if args.replace_unknown and not isinstance(run, Classifier):
        from lyre.tokenizers.char import replace_unknown

        replace_unknown(run.tokenizer)
    run_server(run, args.host, args.port, settings, log_level=args.log_level)
