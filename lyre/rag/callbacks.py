"""Callbacks: watch a question being answered, event by event, without changing the chain.

LangChain's callback idea in a small form. A handler is any object with some of these methods
(all optional; `CallbackHandler` has them as no-ops to subclass):

    on_chain_start(name, inputs)          on_chain_end(outputs)        on_chain_error(error)
    on_retriever_start(query)             on_retriever_end(hits)
    on_llm_start(prompt, max_tokens)      on_llm_new_token(token)      on_llm_end(text)
    on_llm_error(error)
    on_tool_start(name, arguments)        on_tool_end(output)          (lyre.agent's tool calls;
                                                                        `error=True` when the
                                                                        output is an error)

Every call also gets the keywords `run_id` (a UUID for this step), `parent_run_id` (the step
it belongs to, None at the top) and `elapsed_s` on the *_end/_error events, so a tracer can
rebuild the tree: chain -> retriever, chain -> llm call 1, 2, ... Handlers should accept
`**kwargs` so that new keywords do not break them.

A handler that raises is logged once (to stderr) and ignored: watching must never break the
answer. A handler that sets `raise_error = True` (a test, a budget guard) has its exceptions
propagate and stop the chain.

Built in: `JSONLTracer(path)` (`--trace FILE`: one JSON object per event, flushed per line)
and `ProgressPrinter()` (one short line per step on stderr).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from lyre.core.errors import LyreError

EVENTS = (
    "on_chain_start", "on_chain_end", "on_chain_error",
    "on_retriever_start", "on_retriever_end",
    "on_llm_start", "on_llm_new_token", "on_llm_end", "on_llm_error",
    "on_tool_start", "on_tool_end", "on_tool_error",
)


class CallbackHandler:
    """Base class with every event as a no-op; override the ones you need."""

    raise_error: bool = False  # True: an exception in this handler stops the chain

    def on_chain_start(self, name: str, inputs: dict, **kw: Any) -> None: ...
    def on_chain_end(self, outputs: dict, **kw: Any) -> None: ...
    def on_chain_error(self, error: BaseException, **kw: Any) -> None: ...
    def on_retriever_start(self, query: str, **kw: Any) -> None: ...
    def on_retriever_end(self, hits: list, **kw: Any) -> None: ...
    def on_llm_start(self, prompt: str, max_tokens: int, **kw: Any) -> None: ...
    def on_llm_new_token(self, token: str, **kw: Any) -> None: ...
    def on_llm_end(self, text: str, **kw: Any) -> None: ...
    def on_llm_error(self, error: BaseException, **kw: Any) -> None: ...
    def on_tool_start(self, name: str, arguments: str, **kw: Any) -> None: ...
    def on_tool_end(self, output: str, **kw: Any) -> None: ...
    def on_tool_error(self, error: BaseException, **kw: Any) -> None: ...


class Run:
    """One step being watched: its id, its parent's id and its start time."""

    def __init__(self, manager: Callbacks, kind: str, parent: Run | None) -> None:
        self.manager = manager
        self.kind = kind  # "chain" | "retriever" | "llm" | "tool"
        self.run_id = uuid.uuid4()
        self.parent_run_id = parent.run_id if parent is not None else None
        self.started = time.perf_counter()

    def emit(self, event: str, *args: Any, **kw: Any) -> None:
        self.manager.emit(event, *args, run_id=self.run_id, parent_run_id=self.parent_run_id, **kw)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class Callbacks:
    """The handlers of one call, and the dispatch that keeps a failing handler harmless."""

    def __init__(self, handlers: Sequence[object] = ()) -> None:
        self.handlers = list(handlers)
        self._warned: set[int] = set()

    def emit(self, event: str, *args: Any, **kw: Any) -> None:
        for handler in self.handlers:
            method = getattr(handler, event, None)
            if method is None:
                continue
            try:
                method(*args, **kw)
            except Exception as e:
                if getattr(handler, "raise_error", False):
                    raise
                if id(handler) not in self._warned:  # say it once per handler, not per token
                    self._warned.add(id(handler))
                    print(f"lyre: warning: callback {type(handler).__name__}.{event} failed "
                          f"({type(e).__name__}: {e}); ignoring this handler's errors",
                          file=sys.stderr)

    @contextmanager
    def run(self, kind: str, parent: Run | None, start_args: tuple, start_kw: dict | None = None,
            ) -> Iterator[Run]:
        """Emit on_KIND_start, yield the Run, emit on_KIND_error (and re-raise) on an exception.
        The caller emits on_KIND_end itself, since only it knows the outputs."""
        run = Run(self, kind, parent)
        run.emit(f"on_{kind}_start", *start_args, **(start_kw or {}))
        try:
            yield run
        except BaseException as e:
            if not isinstance(e, GeneratorExit):
                run.emit(f"on_{kind}_error", e, elapsed_s=run.elapsed())
            raise


def as_callbacks(handlers: Callbacks | Sequence[object] | None) -> Callbacks:
    if isinstance(handlers, Callbacks):
        return handlers
    return Callbacks(handlers or ())


# ----------------------------------------------------------------------------------------------
# Built-in handlers


class JSONLTracer(CallbackHandler):
    """Every event as one JSON line: {"event", "time", "run_id", "parent_run_id", ...}.

    Tokens are traced too (`on_llm_new_token`), so a trace shows exactly what streamed. Each line
    is flushed, so a trace of a run that crashed is complete up to the crash.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file: IO[str] = self.path.open("a", encoding="utf-8")
        except OSError as e:
            raise LyreError(f"cannot write the trace file {self.path}: {e.strerror}") from None

    def _write(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 6)}
        for key, value in fields.items():
            record[key] = _jsonable(value)
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def on_chain_start(self, name, inputs, **kw): self._write("chain_start", name=name, inputs=inputs, **kw)
    def on_chain_end(self, outputs, **kw): self._write("chain_end", outputs=outputs, **kw)
    def on_chain_error(self, error, **kw): self._write("chain_error", error=repr(error), **kw)
    def on_retriever_start(self, query, **kw): self._write("retriever_start", query=query, **kw)

    def on_retriever_end(self, hits, **kw):
        found = [{"source": h.chunk.source, "page": h.chunk.page, "chunk_id": h.chunk.chunk_id,
                  "score": h.score} for h in hits]
        self._write("retriever_end", hits=found, **kw)

    def on_llm_start(self, prompt, max_tokens, **kw):
        self._write("llm_start", prompt=prompt, max_tokens=max_tokens, **kw)

    def on_llm_new_token(self, token, **kw): self._write("llm_new_token", token=token, **kw)
    def on_llm_end(self, text, **kw): self._write("llm_end", text=text, **kw)
    def on_llm_error(self, error, **kw): self._write("llm_error", error=repr(error), **kw)
    def on_tool_start(self, name, arguments, **kw): self._write("tool_start", name=name, arguments=arguments, **kw)
    def on_tool_end(self, output, **kw): self._write("tool_end", output=output, **kw)
    def on_tool_error(self, error, **kw): self._write("tool_error", error=repr(error), **kw)

    def close(self) -> None:
        self._file.close()


class ProgressPrinter(CallbackHandler):
    """One line per step on stderr: what is being retrieved, which model call runs, how long."""

    def __init__(self, stream: IO[str] | None = None, prefix: str = "lyre rag") -> None:
        self.stream = stream
        self.prefix = prefix
        self.calls = 0

    def _say(self, text: str) -> None:
        print(f"{self.prefix}: {text}", file=self.stream or sys.stderr, flush=True)

    def on_chain_start(self, name, inputs, **kw):
        if kw.get("parent_run_id") is None:
            self.calls = 0
        self._say(f"{name}: started")

    def on_chain_end(self, outputs, **kw):
        self._say(f"done in {kw.get('elapsed_s', 0.0):.2f} s ({self.calls} model calls)")

    def on_retriever_start(self, query, **kw): self._say(f"searching: {query[:60]!r}")

    def on_retriever_end(self, hits, **kw):
        self._say(f"{len(hits)} passages in {kw.get('elapsed_s', 0.0) * 1000:.0f} ms")

    def on_llm_start(self, prompt, max_tokens, **kw):
        self.calls += 1
        self._say(f"model call {self.calls} ({kw.get('step', 'answer')}, prompt "
                  f"{kw.get('prompt_tokens', '?')} tokens)")

    def on_llm_end(self, text, **kw):
        self._say(f"model call {self.calls} done in {kw.get('elapsed_s', 0.0):.2f} s")

    def on_tool_start(self, name, arguments, **kw): self._say(f"calling {name}({arguments[:60]})")

    def on_tool_end(self, output, **kw):
        what = "error" if kw.get("error") else "result"
        self._say(f"{what} in {kw.get('elapsed_s', 0.0) * 1000:.0f} ms: {output[:60]!r}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)
