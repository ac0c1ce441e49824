"""lyre/core/openai_client.py: the one OpenAI-compatible client (issue 19.9) and its retry policy.

Scripted answers through httpx.MockTransport (no sockets, no sleeping: the sleeps are recorded),
and one real closed port for the connection error's one line.
"""

from __future__ import annotations

import httpx
import pytest

from lyre.core.errors import LyreError
from lyre.core.openai_client import EndpointError, OpenAIClient, RetryPolicy, api_root


def scripted(*answers):
    """A transport that answers with the given (status, json) pairs or exceptions, in order."""
    seen: list[str] = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        if isinstance(body, bytes):
            return httpx.Response(status, content=body)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle), seen


def client(transport, sleeps, **kw):
    return OpenAIClient("http://judge.test:8000", "sk-1", transport=transport, sleep=sleeps.append,
                        retry=RetryPolicy(retries=3, backoff=0.5), **kw)


def test_base_url_with_or_without_v1():
    assert api_root("http://h:1") == api_root("http://h:1/") == api_root("http://h:1/v1/") == "http://h:1/v1"
    with pytest.raises(LyreError, match="--llm-url must be an http"):
        OpenAIClient("localhost:8000", what="--llm-url")


def test_429_and_5xx_are_retried_with_backoff_then_succeed():
    transport, seen = scripted((429, {}), (503, {"error": {"message": "busy"}}), (200, {"ok": 1}))
    sleeps: list[float] = []
    assert client(transport, sleeps).post_json("/chat/completions", {}) == {"ok": 1}
    assert seen == ["POST /v1/chat/completions"] * 3 and sleeps == [0.5, 1.0]


def test_retries_spent_is_one_transient_error_with_the_servers_message():
    transport, seen = scripted(*[(500, {"error": {"message": "boom\nsecond line"}})] * 4)
    sleeps: list[float] = []
    with pytest.raises(EndpointError) as e:
        client(transport, sleeps).post_json("/chat/completions", {})
    assert e.value.transient and e.value.status == 500 and e.value.reason == "HTTP 500: boom"
    assert len(seen) == 4 and sleeps == [0.5, 1.0, 2.0]
    assert "\n" not in str(e.value)


def test_a_final_answer_is_not_retried():
    transport, seen = scripted((401, {"error": {"message": "bad API key"}}))
    with pytest.raises(EndpointError) as e:
        client(transport, []).post_json("/chat/completions", {})
    assert not e.value.transient and e.value.reason == "HTTP 401: bad API key" and len(seen) == 1


def test_a_reply_that_is_not_json_is_retried_then_said():
    transport, seen = scripted(*[(200, b"<html>proxy</html>")] * 2, (200, {"choices": []}),
                               (200, {"data": [1]}))
    sleeps: list[float] = []
    got = client(transport, sleeps).post_json("/x", {}, extract=lambda r: r["data"])
    assert got == [1] and len(seen) == 4 and sleeps == [0.5, 1.0, 2.0]
    transport, _ = scripted(*[(200, b"<html>proxy</html>")] * 4)
    with pytest.raises(EndpointError, match="not an OpenAI chat completion: b'<html>proxy"):
        client(transport, []).post_json("/x", {}, expected="an OpenAI chat completion")


def test_a_timeout_is_retried_and_said_with_its_seconds():
    transport, seen = scripted(*[httpx.ReadTimeout("slow")] * 4)
    with pytest.raises(EndpointError, match=r"no reply within 2\.5 s"):
        client(transport, [], timeout=2.5).request("GET", "/models")
    assert len(seen) == 4


def test_a_closed_port_is_one_line():
    from lyre.serve.server import free_port

    sleeps: list[float] = []
    endpoint = OpenAIClient(f"http://127.0.0.1:{free_port()}/v1", retry=RetryPolicy(2, 0.01),
                            sleep=sleeps.append)
    with pytest.raises(EndpointError, match=r"^http://127\.0\.0\.1:\d+/v1/models: cannot connect "
                                            r"\(Connection refused\)$"):
        endpoint.request("GET", "/models")
    assert sleeps == [0.01, 0.02]


def test_a_stream_retries_its_start_only():
    transport, seen = scripted((503, {}), (200, b"data: 1\n\ndata: [DONE]\n\n"))
    sleeps: list[float] = []
    with client(transport, sleeps).stream("POST", "/chat/completions", json={}) as r:
        assert [line for line in r.iter_lines() if line] == ["data: 1", "data: [DONE]"]
    assert len(seen) == 2 and sleeps == [0.5]
