"""Stand-ins for the RAG tests: a scripted model, a fixed retriever, a scripted OpenAI server.

ScriptedLLM counts one token per character and checks the budget rule on every call, so any
chain that overflowed the context would fail the test that ran it. ScriptedServer is a real
HTTP server (threads, no dependencies) speaking the OpenAI chat completions protocol with
streaming, so OpenAILLM and `lyre rag ask --llm-url` are tested over a socket with answers the
test chooses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lyre.rag.types import Chunk, Hit


class ScriptedLLM:
    """An LLM whose answer to a prompt is `reply(prompt)`; one token per character."""

    name = "scripted"

    def __init__(self, reply: Callable[[str], str] | str = "Hector [1]", context_window: int = 2000,
                 fail: Exception | None = None) -> None:
        self.reply = reply if callable(reply) else (lambda prompt, text=reply: text)
        self.context_window = context_window
        self.prompts: list[str] = []
        self.budgets: list[int] = []
        self.fail = fail

    def count_tokens(self, text: str) -> int:
        return len(text)

    def complete(self, prompt, max_tokens, stop=None, on_token=None) -> str:
        assert len(prompt) + max_tokens <= self.context_window, "a prompt overflowed the context"
        self.prompts.append(prompt)
        self.budgets.append(max_tokens)
        if self.fail is not None:
            raise self.fail
        text = self.reply(prompt)
        for i in range(0, len(text), 3):  # streamed in pieces, as a real model would
            if on_token is not None:
                on_token(text[i:i + 3])
        return text


class FixedRetriever:
    """Returns the same hits (the first k) for any query; records the queries."""

    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits
        self.queries: list[str] = []

    def search(self, query: str, k: int = 4, source_glob: str | None = None) -> list[Hit]:
        self.queries.append(query)
        return self.hits[:k]


def make_hits(texts: list[str], source: str = "iliad.txt", page: int | None = None) -> list[Hit]:
    hits, at = [], 0
    for i, t in enumerate(texts):
        hits.append(Hit(Chunk(text=t, source=source, start=at, end=at + len(t), page=page),
                        score=1.0 / (i + 1), rank=i + 1))
        at += len(t)
    return hits


class ScriptedServer:
    """An OpenAI-compatible server on 127.0.0.1 answering chat completions with reply(prompt).

    context: what GET /v1/models/{model} reports (None: the field is absent). tokenize: offer
    vLLM's POST /tokenize (one token per character of the message plus 5 for the template).
    fail_with: answer every chat completion with this status, or "garbage" (a non-JSON event),
    "html" (a page, not a stream), "nonstream" (a whole JSON completion despite stream: true).
    """

    def __init__(self, reply: Callable[[str], str] | str = "Priam [1]", model: str = "scripted",
                 context: int | None = 4096, tokenize: bool = True,
                 fail_with: int | str | None = None) -> None:
        self.reply = reply if callable(reply) else (lambda prompt, text=reply: text)
        self.model, self.context, self.tokenize, self.fail_with = model, context, tokenize, fail_with
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _json(self, status: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == f"/v1/models/{server.model}":
                    card = {"id": server.model, "object": "model"}
                    if server.context is not None:
                        card["context_length"] = server.context
                    self._json(200, card)
                elif self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": server.model}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, **body})
                if self.path == "/tokenize" and server.tokenize:
                    text = "".join(m["content"] for m in body["messages"])
                    self._json(200, {"count": len(text) + 5, "max_model_len": server.context})
                elif self.path == "/v1/chat/completions":
                    self._chat(body)
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def _chat(self, body: dict) -> None:
                if server.fail_with == "nonstream":  # a server that ignores stream: true
                    text = server.reply(body["messages"][-1]["content"])
                    self._json(200, {"choices": [{"index": 0, "message": {
                        "role": "assistant", "content": text}, "finish_reason": "stop"}]})
                    return
                if server.fail_with == "html":
                    body_bytes = b"<html><body>a login page</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body_bytes)))
                    self.end_headers()
                    self.wfile.write(body_bytes)
                    return
                if server.fail_with == "garbage":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    self.wfile.write(b"data: <html>nope</html>\n\n")
                    return
                if server.fail_with is not None:
                    self._json(int(server.fail_with), {"error": {"message": "the model fell over"}})
                    return
                text = server.reply(body["messages"][-1]["content"])
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i in range(0, len(text), 4):
                    chunk = {"choices": [{"index": 0, "delta": {"content": text[i:i + 4]}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
