"""`lyre serve RUN --tools ...`: the chat page's agent (POST /v1/agent/answer), the page that
shows each call and result collapsed in the conversation (in a real browser, skipped without
chromium), and `lyre chat RUN --tools` in the REPL."""

from __future__ import annotations

import io
import json
from typing import Literal

import pytest
from fastapi.testclient import TestClient
from serve_util import sse_events
from test_web import ARTIFACTS, browser  # noqa: F401  (the browser fixture)

from lyre.core.errors import LyreError
from lyre.serve import ServeSettings
from lyre.serve.app import create_app

ASK = [{"role": "user", "content": "What is 6 times 7?"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The shared tiny run with a context that holds a tool list."""
    from serve_util import tiny_served_run

    return tiny_served_run(tmp_path_factory.getbasetemp(), block_size=2048)


@pytest.fixture(scope="module")
def client(run):
    with TestClient(create_app(run, ServeSettings(model_name="tiny", tools="calculator"))) as c:
        yield c


def test_the_page_and_models_name_the_tools(client, run):
    page = client.get("/")
    assert '<meta name="lyre-tools" content="calculator">' in page.text
    assert client.get("/v1/models").json()["data"][0]["tools"] == ["calculator"]
    with TestClient(create_app(run, ServeSettings())) as plain:
        assert '<meta name="lyre-tools" content="">' in plain.get("/").text
        assert plain.get("/v1/models").json()["data"][0]["tools"] is None
        assert plain.post("/v1/agent/answer", json={"messages": ASK}).status_code == 404


def test_the_agent_answers_with_its_steps(client):
    r = client.post("/v1/agent/answer", json={"messages": ASK, "max_tokens": 24})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "agent.answer" and body["model"] == "tiny"
    assert body["stopped"] in ("answer", "length", "max_steps")
    assert body["model_calls"] >= 1 and isinstance(body["answer"], str)


def test_forced_calls_stream_call_then_result_events(client):
    with client.stream("POST", "/v1/agent/answer", json={
            "messages": ASK, "max_tokens": 200, "tool_choice": "required", "max_steps": 1,
            "stream": True}) as r:
        assert r.status_code == 200
        events = sse_events(r.iter_lines())
    assert events[-1] == "[DONE]"
    answer = events[-2]
    assert answer["object"] == "agent.answer" and answer["stopped"] in ("max_steps", "length")
    calls = [e for e in events[:-2] if e["object"] == "agent.call"]
    results = [e for e in events[:-2] if e["object"] == "agent.result"]
    assert len(calls) == len(results) == len(answer["steps"])
    for c, res, step in zip(calls, results, answer["steps"], strict=True):
        assert c["name"] == "calculator" and c["call_id"] == res["call_id"] == step["call_id"]
        assert json.loads(c["arguments"]) == step["arguments"]
        assert res["result"] == step["result"] and res["is_error"] == step["error"]


def test_bad_requests_are_400s(client, run):
    r = client.post("/v1/agent/answer", json={"messages": [{"role": "assistant", "content": "x"}]})
    assert r.status_code == 400 and "last message must be the user's" in r.json()["error"]["message"]
    r = client.post("/v1/agent/answer", json={"messages": ASK, "tool_choice": "rm"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    r = client.post("/v1/agent/answer", json={"messages": []})
    assert r.status_code == 400
    with pytest.raises(LyreError, match="unknown tool 'calc'"):
        create_app(run, ServeSettings(tools="calc"))


def test_the_openai_api_stays_openai_shaped(client):
    """--tools is for the page: a chat completion without tools is a plain answer."""
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": ASK, "max_tokens": 8})
    message = r.json()["choices"][0]["message"]
    assert r.status_code == 200 and message.get("tool_calls") is None


# ----------------------------------------------------------------------------------------------
# The page, in a browser: the agent's events are scripted (page.route), so what is checked is
# what the page shows: each call collapsed, its result inside, the answer after them.

SCRIPTED = [
    {"object": "agent.call", "call_id": "c1", "name": "calculator", "arguments": '{"expression": "6*7"}'},
    {"object": "agent.result", "call_id": "c1", "result": "42", "is_error": False},
    {"object": "agent.call", "call_id": "c2", "name": "calculator", "arguments": '{"expression": "6x"}'},
    {"object": "agent.result", "call_id": "c2", "result": "Error: not an arithmetic expression",
     "is_error": True},
    {"object": "agent.delta", "text": "6 times 7 "},
    {"object": "agent.delta", "text": "is 42."},
    {"object": "agent.answer", "model": "tiny", "answer": "6 times 7 is 42.", "stopped": "answer",
     "steps": [{}, {}], "model_calls": 3, "tool_errors": 1, "notices": []},
]


def test_the_page_shows_each_call_and_result_collapsed(browser, run):  # noqa: F811
    from lyre.serve.server import start_background

    sent: list[dict] = []

    def fulfil(route):
        sent.append(json.loads(route.request.post_data))
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in SCRIPTED) + "data: [DONE]\n\n"
        route.fulfill(status=200, content_type="text/event-stream", body=body)

    with start_background(run, ServeSettings(model_name="tiny", tools="calculator")) as srv:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("**/v1/agent/answer", fulfil)
        page.goto(srv.url + "/")
        page.wait_for_function("document.getElementById('model-name').textContent.includes('tiny')")
        page.click("#mode-chat")
        assert "tools: calculator" in page.get_attribute("#prompt", "placeholder")
        page.fill("#prompt", "What is 6 times 7?")
        page.press("#prompt", "Enter")
        page.wait_for_selector(".msg.assistant .meta", timeout=30_000)
        assert sent[0]["messages"] == ASK and sent[0]["stream"] is True

        calls = page.locator(".msg.assistant .tool-calls details.tool-call")
        assert calls.count() == 2
        assert calls.nth(0).locator("summary").text_content() == '⚙ calculator({"expression": "6*7"})'
        assert not calls.nth(0).evaluate("d => d.open")  # collapsed
        assert not calls.nth(0).locator("pre").is_visible()
        calls.nth(0).locator("summary").click()
        assert calls.nth(0).locator("pre").text_content() == "42"
        assert "error" in calls.nth(1).get_attribute("class")
        assert page.text_content(".msg.assistant .content") == "6 times 7 is 42."
        meta = page.text_content(".msg.assistant .meta")
        assert "2 tool calls" in meta and "3 model calls" in meta and "1 failed" in meta
        page.screenshot(path=str(ARTIFACTS / "web-agent.png"), full_page=True)

        page.reload()  # the conversation is stored with its calls
        page.click("#history li .open")
        page.wait_for_selector(".msg.assistant details.tool-call")
        assert page.locator(".msg.assistant details.tool-call").count() == 2
        assert not errors, errors


# ----------------------------------------------------------------------------------------------
# lyre chat --tools


def test_the_repl_runs_the_loop_and_shows_the_calls(run):
    from lyre.agent import tool
    from lyre.agent.chat import AgentChatSession
    from lyre.chat.repl import run_repl
    from lyre.chat.templates import ChatSettings, get_template

    @tool
    def pick(a: Literal[1, 2, 3], b: Literal[1, 2, 3]) -> int:
        """Add two small numbers."""  # a closed, small schema: a random model's call fits
        return a + b

    settings = ChatSettings(max_new_tokens=200, temperature=0.0)
    session = AgentChatSession(run, get_template("plain"), [pick], settings,
                               max_steps=1, tool_choice="required")  # a random model: make it call
    out = io.StringIO()
    run_repl(session, stdin=io.StringIO("What is 6 times 7?\n/quit\n"), stdout=out)
    text = out.getvalue()
    assert "tools: pick" in text.splitlines()[0]
    assert "[call] pick(" in text
    assert "[result]" in text or "[error]" in text
    assert "[notice] no answer after 1 steps" in text or "max_new_tokens" in text
