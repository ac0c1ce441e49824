"""The chat page's "use my documents" switch (`lyre serve RUN --rag IDX`).

Server side (FastAPI's TestClient): the page says whether the server has an index
(`<body data-rag="on">`; without one the switch is disabled and its tooltip says how to enable
it), and /v1/models carries the same fact as `rag`.

In a real browser (Debian's chromium driven by Playwright, skipped with the reason when either
is missing, as tests/test_web.py): switch on, ask, the answer streams in from /v1/rag/answer
with its sources numbered under it; a follow-up sends the earlier exchange as history; a 400
from the route is shown like the chat's errors; without --rag the switch is disabled.
"""

from __future__ import annotations

import json
import os

import pytest
from fastapi.testclient import TestClient
from serve_util import tiny_served_run
from test_web import ARTIFACTS, browser  # noqa: F401  (the browser fixture)

from lyre.generate.runs import load_run
from lyre.serve import ServeSettings
from lyre.serve.app import create_app
from lyre.serve.server import start_background

DOCS = {
    "troy.txt": "Hector, son of Priam, was the greatest warrior of Troy.\n\n"
                "Achilles sulked in his tent by the hollow ships of the Achaeans.\n\n"
                "Andromache was the wife of Hector and the mother of Astyanax.\n",
    "gods.md": "# Gods\n\nApollo sent a plague upon the camp of the Achaeans.\n",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return load_run(tiny_served_run(tmp_path_factory.getbasetemp()), device="cpu")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    from lyre.rag.index import index_paths, open_store
    from lyre.rag.splitter import SplitConfig

    root = tmp_path_factory.mktemp("page-rag")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text, encoding="utf-8")
    store = open_store(root / "idx", create=True)
    cwd = os.getcwd()
    os.chdir(root)  # sources are the paths as given: docs/troy.txt, as a user would index them
    try:
        index_paths(["docs"], store, SplitConfig(chunk_size=120, chunk_overlap=0))
    finally:
        os.chdir(cwd)
        store.close()
    return root / "idx"


# ----------------------------------------------------------------------------------------------
# Server side


def test_page_and_models_say_whether_the_server_has_an_index(run, index):
    with TestClient(create_app(run, ServeSettings(rag_index=str(index)))) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-cache"
        assert '<body data-rag="on">' in page.text and 'id="use-docs"' in page.text
        assert 'role="switch"' in page.text and "Use my documents" in page.text
        assert client.get("/v1/models").json()["data"][0]["rag"] is True
        assert client.get("/v1/models/tiny-chat").json()["rag"] is True

    with TestClient(create_app(run, ServeSettings())) as client:
        page = client.get("/")
        assert '<body data-rag="off">' in page.text and 'data-rag="on"' not in page.text
        # The switch is there but disabled, its tooltip (and a visible hint) saying how to
        # turn it on.
        switch = page.text[page.text.index('id="use-docs-label"'):]
        switch = switch[:switch.index("</label>")]
        assert "disabled" in switch and "lyre serve RUN --rag IDX" in switch
        assert client.get("/v1/models").json()["data"][0]["rag"] is False


def test_the_flag_is_documented_in_openapi(run):
    with TestClient(create_app(run, ServeSettings())) as client:
        props = client.get("/openapi.json").json()["components"]["schemas"]["Model"]["properties"]
    assert props["rag"]["type"] == "boolean" and "--rag" in props["rag"]["description"]


def test_page_files_stay_offline(run, index):
    with TestClient(create_app(run, ServeSettings(rag_index=str(index)))) as client:
        for path in ("/", "/static/app.js", "/static/app.css"):
            text = client.get(path).text
            assert "http://" not in text and "https://" not in text, path  # no CDN


def test_a_bug_mid_stream_is_an_error_event_not_a_cut_stream(run, index, monkeypatch):
    """What the page shows comes from the stream: an unexpected exception in the chain must end
    it with an {"error"} event and [DONE] (a cut stream would read as an unreachable server)."""
    import httpx
    from serve_util import sse_events

    def broken(req, on_token=None):
        on_token("Andro")
        raise RuntimeError("boom")

    with start_background(run, ServeSettings(rag_index=str(index))) as srv:
        monkeypatch.setattr(srv.app.state.rag, "answer", broken)
        with httpx.stream("POST", srv.url + "/v1/rag/answer", timeout=60,
                          json={"question": "Who?", "stream": True}) as r:
            events = sse_events(r.iter_lines())
    assert events[0] == {"object": "rag.answer.delta", "text": "Andro"}
    assert events[1]["error"]["type"] == "server_error"
    assert "RuntimeError" in events[1]["error"]["message"] and events[-1] == "[DONE]"


# ----------------------------------------------------------------------------------------------
# In a browser


def _open(browser, url):  # noqa: F811
    page = browser.new_page()
    page.goto(url + "/")
    page.evaluate("localStorage.clear()")
    page.reload()
    page.wait_for_function("document.getElementById('model-name').textContent.includes('tiny')")
    return page


def _send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    page.wait_for_function("document.getElementById('send').textContent != 'Stop'", timeout=120_000)


def test_switch_on_answers_from_the_documents_with_sources(browser, run, index):  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    with start_background(run, ServeSettings(rag_index=str(index))) as srv:
        page = _open(browser, srv.url)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        bodies: dict[str, list[dict]] = {}
        page.on("request", lambda r: bodies.setdefault(r.url.split("/v1/")[-1], []).append(
            json.loads(r.post_data)) if r.method == "POST" else None)
        page.click("#mode-chat")  # the tiny run is a base model: it opens in Complete mode
        assert page.is_enabled("#use-docs") and page.is_hidden("#use-docs-why")
        page.click("#toggle-settings")
        page.fill("#max_tokens", "12")
        page.click("#toggle-settings")
        # Keyboard: the switch is a labelled checkbox; Space turns it on.
        page.focus("#use-docs")
        page.keyboard.press("Space")
        assert page.is_checked("#use-docs")
        assert page.get_attribute("#use-docs", "role") == "switch"
        assert "documents" in page.get_attribute("#prompt", "placeholder")

        _send(page, "Who was the wife of Hector?")
        assert page.is_hidden("#error"), page.text_content("#error-text")
        assert "chat/completions" not in bodies
        sent = bodies["rag/answer"][-1]
        assert sent["question"] == "Who was the wife of Hector?" and sent["stream"] is True
        assert sent["history"] == [] and sent["max_tokens"] == 12
        answer = page.locator(".msg.assistant").last
        assert answer.locator(".content").text_content()
        labels = [s.text_content() for s in answer.locator(".sources summary").all()]
        assert labels and labels[0].startswith("[1] docs/") and "docs/troy.txt" in " ".join(labels), labels
        assert all(lb.split(", ")[-1].startswith(("characters", "page")) or "cited" in lb
                   for lb in labels), labels
        assert [int(lb[1:lb.index("]")]) for lb in labels] == list(range(1, len(labels) + 1))
        assert "from your documents" in answer.locator(".meta").text_content()
        # A passage opens under its line (a <details>: Enter or a click).
        answer.locator(".sources summary").first.click()
        assert answer.locator(".sources p").first.is_visible()
        page.screenshot(path=str(ARTIFACTS / "web-rag.png"), full_page=True)

        # A follow-up carries the exchange before it; the sources survive a reload.
        _send(page, "And who sulked?")
        history = bodies["rag/answer"][-1]["history"]
        assert len(history) == 1 and history[0]["question"] == "Who was the wife of Hector?"
        page.reload()
        page.wait_for_function("document.getElementById('model-name').textContent.includes('tiny')")
        page.click("#history li .open")
        assert page.locator(".msg.assistant .sources").count() == 2
        assert page.is_checked("#use-docs")  # the switch is remembered

        # A 400 from the route (max_tokens 0) is shown like the chat's; the turn goes back.
        page.click("#toggle-settings")
        page.fill("#max_tokens", "0")
        page.click("#toggle-settings")
        _send(page, "Who sent a plague?")
        assert "The server answered 400" in page.text_content("#error-text")
        assert page.input_value("#prompt") == "Who sent a plague?"
        assert page.locator(".msg.assistant").count() == 2

        # Off again: the conversation goes on with the chat route.
        page.click("#use-docs-label")
        assert not page.is_checked("#use-docs")
        page.click("#toggle-settings")
        page.fill("#max_tokens", "8")
        page.click("#toggle-settings")
        _send(page, "Sing")
        assert bodies["chat/completions"] and page.is_hidden("#error")
        assert page.locator(".msg.assistant").last.locator(".sources").count() == 0
        assert not errors, errors
        page.close()


def test_without_an_index_the_switch_is_disabled_and_says_why(browser, run):  # noqa: F811
    with start_background(run, ServeSettings()) as srv:
        page = _open(browser, srv.url)
        page.click("#mode-chat")
        assert page.is_visible("#use-docs") and page.is_disabled("#use-docs")
        assert "--rag IDX" in page.get_attribute("#use-docs-label", "title")
        assert "--rag IDX" in page.text_content("#use-docs-why")  # also without hovering
        page.screenshot(path=str(ARTIFACTS / "web-rag-off.png"))
        page.click("#mode-complete")
        assert page.is_hidden("#docs-option")  # only chat answers from documents
        page.close()


def _sse(*events) -> str:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)


def test_cited_sources_are_marked_and_errors_mid_stream_are_shown(browser, run, index):  # noqa: F811
    """The route scripted (a tiny model seldom cites): cited sources stand out, and an error
    event after the stream started reads as the 400 it is."""
    source = {"n": 1, "source": "docs/troy.txt", "page": None, "start": 0, "end": 55,
              "chunk_id": "docs/troy.txt#0", "score": 2.0, "heading": None, "trimmed": False,
              "cited": False, "text": "Hector, son of Priam, was the greatest warrior of Troy."}
    pdf = {**source, "n": 2, "source": "docs/iliad.pdf", "page": 7, "cited": True,
           "chunk_id": "docs/iliad.pdf#0@p7", "text": "Andromache was the wife of Hector."}
    answer = {"object": "rag.answer", "model": "tiny-chat", "question": "Who?",
              "standalone_question": "Who?", "chain": "stuff", "answer": "Andromache [2]",
              "cited": [2], "llm_calls": 1, "notices": ["passage 1 was trimmed"],
              "sources": [source, pdf]}
    replies = [
        _sse({"object": "rag.answer.delta", "text": "Andromache"},
             {"object": "rag.answer.delta", "text": " [2]"}, answer, "[DONE]"),
        _sse({"error": {"message": "the question is empty; ask something", "code": "invalid_request",
                        "type": "invalid_request_error", "param": None}}, "[DONE]"),
    ]
    with start_background(run, ServeSettings(rag_index=str(index))) as srv:
        page = _open(browser, srv.url)
        page.set_viewport_size({"width": 390, "height": 800})
        page.route("**/v1/rag/answer", lambda route: route.fulfill(
            status=200, content_type="text/event-stream", body=replies.pop(0)))
        page.click("#mode-chat")
        page.click("#use-docs-label")
        _send(page, "Who?")
        reply = page.locator(".msg.assistant")
        assert reply.locator(".content").text_content() == "Andromache [2]"
        items = reply.locator(".sources li")
        assert items.nth(0).text_content().startswith("[1] docs/troy.txt, characters 0-55")
        assert items.nth(1).get_attribute("class") == "cited"
        assert items.nth(1).locator("summary").text_content() == "[2] docs/iliad.pdf, page 7 · cited"
        assert "note: passage 1 was trimmed" in reply.locator(".meta").text_content()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # fits a phone
        page.screenshot(path=str(ARTIFACTS / "web-rag-phone.png"), full_page=True)

        _send(page, "  ")  # only spaces: the page sends nothing
        _send(page, "Again?")
        assert "The server answered 400: the question is empty" in page.text_content("#error-text")
        assert page.input_value("#prompt") == "Again?" and page.locator(".msg").count() == 2
        page.close()
