"""A scripted OpenAI-compatible endpoint for the agent tests: each chat request gets the next
scripted reply (streamed as server-sent events, in pieces, the way servers stream), and every
request body is recorded so a test can assert the exact transcript the loop sent."""

from __future__ import annotations

import json

import httpx


def call(name: str, arguments, call_id: str) -> dict:
    """A scripted tool call (`arguments` a dict, or raw text sent as is)."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "name": name, "arguments": text}


def _sse(chunks: list[dict]) -> bytes:
    out = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return out.encode()


def _chunks(reply: dict) -> list[dict]:
    """A reply ({"content": str} or {"calls": [...]}) as chat.completion.chunk objects: content
    in 3-character pieces; each call's id and name first, then its arguments in 5-character
    pieces, as OpenAI streams them."""
    def chunk(delta: dict, finish=None) -> dict:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                "model": "scripted", "choices": [{"index": 0, "delta": delta,
                                                  "finish_reason": finish}]}

    out = [chunk({"role": "assistant", "content": ""})]
    text = reply.get("content") or ""
    out += [chunk({"content": text[i:i + 3]}) for i in range(0, len(text), 3)]
    for i, c in enumerate(reply.get("calls") or ()):
        out.append(chunk({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                                          "function": {"name": c["name"], "arguments": ""}}]}))
        args = c["arguments"]
        out += [chunk({"tool_calls": [{"index": i, "function": {"arguments": args[j:j + 5]}}]})
                for j in range(0, len(args), 5)]
    out.append(chunk({}, reply.get("finish") or ("tool_calls" if reply.get("calls") else "stop")))
    return out


class ScriptedEndpoint:
    """httpx.MockTransport serving GET /v1/models and POST /v1/chat/completions from a script.
    A scripted reply may also be {"status": 400, "error": {...}} (an error answer)."""

    def __init__(self, replies: list[dict], model: str = "scripted", repeat_last: bool = False):
        self.replies, self.model, self.repeat_last = list(replies), model, repeat_last
        self.bodies: list[dict] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list",
                                             "data": [{"id": self.model, "object": "model"}]})
        if request.url.path != "/v1/chat/completions":
            return httpx.Response(404, json={"error": {"message": "not found"}})
        self.bodies.append(json.loads(request.content))
        if not self.replies:
            return httpx.Response(500, json={"error": {"message": "the script is over"}})
        reply = self.replies[0] if self.repeat_last and len(self.replies) == 1 else self.replies.pop(0)
        if "status" in reply:
            return httpx.Response(reply["status"], json={"error": reply["error"]})
        return httpx.Response(200, content=_sse(_chunks(reply)),
                              headers={"content-type": "text/event-stream"})

    def model_client(self, **kw):
        from lyre.agent.llm import OpenAIChat
        from lyre.core.openai_client import RetryPolicy

        return OpenAIChat("http://scripted.test/v1", self.model, transport=self.transport,
                          retry=RetryPolicy(retries=0), **kw)
