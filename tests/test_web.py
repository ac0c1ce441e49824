"""The chat page in a real browser: Debian's chromium, headless, driven by Playwright.

It loads the page from a live `lyre serve` on 127.0.0.1, sends a message, watches the answer
stream in, switches to completion mode, and checks the message shown when the server cannot be
reached; a failed message leaves the conversation (a real 400, an unreachable server); a base
model opens in Complete mode; a long conversation in a small context still gets full answers;
the phone drawer has a backdrop. Screenshots go to test-artifacts/ (gitignored): look at them.
Without chromium (or the playwright package) the tests skip and say how to get it (`make
browser`; `.ci/run` installs chromium).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from serve_util import NO_CHROMIUM, chromium_path, tiny_served_run

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = chromium_path()
    if exe is None:
        pytest.skip(NO_CHROMIUM)
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        try:
            context = p.chromium.launch_persistent_context(
                str(profile), executable_path=exe, headless=True, args=FLAGS,
                viewport={"width": 1100, "height": 760},
            )
        except Exception as e:  # a chromium that cannot start here (no libs, no /dev/shm, ...)
            pytest.skip(f"chromium at {exe} did not start: {str(e).splitlines()[0]}")
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from test_serve import _background_app, _slow_server

    from lyre.generate.runs import load_run

    run = load_run(tiny_served_run(tmp_path_factory.getbasetemp()), device="cpu")
    # A short pause per decode step, so the answer visibly streams in.
    with _background_app(_slow_server(run, delay=0.03)) as srv:
        yield srv


def test_page_chat_streams_answer_and_completion_mode(browser, server):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model-name').textContent.includes('tiny')")

    # Chat: send a message, see the answer arrive piece by piece, then its stats.
    page.click("#mode-chat")
    page.click("#toggle-settings")
    page.fill("#max_tokens", "40")
    page.click("#toggle-settings")
    page.fill("#prompt", "Sing, O goddess")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".msg.user")
    page.wait_for_function(
        "(() => { const m = document.querySelector('.msg.assistant.streaming .content');"
        " return m && m.textContent.length > 0; })()", timeout=30_000)
    partial = page.text_content(".msg.assistant .content")
    page.wait_for_selector(".msg.assistant .meta", timeout=60_000)
    final = page.text_content(".msg.assistant .content")
    assert partial and final.startswith(partial.rstrip()[:1]) and len(final) >= len(partial.strip())
    stats = page.text_content(".msg.assistant .meta")
    assert "tokens/s" in stats and "token" in stats, stats
    assert page.text_content("#stats") == ""  # one stats line: under the answer, not twice
    assert page.is_hidden("#error")
    assert page.locator("#history li").count() == 1
    page.screenshot(path=str(ARTIFACTS / "web-chat.png"), full_page=True)

    # A second turn goes into the same conversation; "New chat" starts another.
    page.fill("#prompt", "And then?")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.msg.assistant .meta').length == 2", timeout=60_000)
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0

    # Completion mode: the beginning, then the generated text highlighted, with a token count.
    page.click("#mode-complete")
    page.fill("#prompt", "The wrath of")
    page.click("#send")
    page.wait_for_function("document.getElementById('stats').textContent.includes('prompt')", timeout=60_000)
    assert page.text_content("#completion-output").startswith("The wrath of")
    assert page.text_content("#completion-output .generated")
    assert "token" in page.text_content("#stats")

    # The server unreachable: a clear message, not a silent failure.
    page.route("**/v1/**", lambda route: route.abort())
    page.fill("#prompt", "Hello?")
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "Cannot reach the server" in page.text_content("#error")
    page.unroute("**/v1/**")
    assert not errors, errors
    page.close()


def test_page_fits_a_phone_screen(browser, server):
    page = browser.new_page()
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model-name').textContent.includes('tiny')")
    page.click("#mode-chat")
    page.fill("#prompt", "Hi")
    page.click("#send")
    page.wait_for_selector(".msg.assistant .meta", timeout=60_000)
    # Nothing sticks out sideways, the history is a drawer, the send button is on screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert not page.is_visible("#new-chat") or page.evaluate(
        "document.getElementById('sidebar').getBoundingClientRect().right <= 0")
    box = page.locator("#send").bounding_box()
    assert box and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 800
    # Closed, the drawer casts no shadow onto the page's left edge.
    assert page.evaluate("getComputedStyle(document.getElementById('sidebar')).boxShadow") == "none"
    page.screenshot(path=str(ARTIFACTS / "web-phone.png"))
    page.click("#toggle-sidebar")
    time.sleep(0.3)  # the drawer slides in
    assert page.evaluate("document.getElementById('sidebar').getBoundingClientRect().left") >= 0
    assert page.is_visible("#backdrop")  # the page behind is dimmed; a tap there closes
    page.screenshot(path=str(ARTIFACTS / "web-phone-history.png"))
    page.mouse.click(370, 400)
    time.sleep(0.3)
    assert page.is_hidden("#backdrop")
    assert page.evaluate("document.getElementById('sidebar').getBoundingClientRect().right") <= 0
    page.close()


# ----------------------------------------------------------------------------------------------
# A first visit, failures, a small context


def _fresh_page(browser, server, width: int = 1100, height: int = 760):
    """A page as on a first visit: nothing in localStorage."""
    page = browser.new_page()
    page.set_viewport_size({"width": width, "height": height})
    page.goto(server.url + "/")
    page.evaluate("localStorage.clear()")
    page.reload()
    page.wait_for_function("document.getElementById('model-name').textContent.includes('tiny')")
    return page


def _set_max_tokens(page, n: int) -> None:
    page.click("#toggle-settings")
    page.fill("#max_tokens", str(n))
    page.click("#toggle-settings")


def _send(page, text: str | None = None) -> None:
    if text is not None:
        page.fill("#prompt", text)
    page.click("#send")
    page.wait_for_function("document.getElementById('send').textContent != 'Stop'", timeout=60_000)


def _stored(page) -> list[dict]:
    return page.evaluate("JSON.parse(localStorage.getItem('lyre.conversations.v1') || '[]')")


def test_base_model_opens_in_complete_mode(browser, server):
    page = _fresh_page(browser, server)
    # The tiny run has the plain template: a base model, so the page opens in Complete mode.
    assert page.get_attribute("#mode-complete", "aria-selected") == "true"
    assert page.is_visible("#complete-view") and page.is_hidden("#chat-view")
    page.screenshot(path=str(ARTIFACTS / "web-base-model.png"))
    # Typing a setting does not pin the mode; choosing a tab does, for this model.
    _set_max_tokens(page, 9)
    page.reload()
    page.wait_for_function("document.getElementById('model-name').textContent.includes('tiny')")
    assert page.get_attribute("#mode-complete", "aria-selected") == "true"
    page.click("#mode-chat")
    page.reload()
    page.wait_for_function("document.getElementById('model-name').textContent.includes('tiny')")
    assert page.get_attribute("#mode-chat", "aria-selected") == "true"
    page.close()

    # A chat model (its template is not plain) opens in Chat mode.
    def chat_model(route):
        body = route.fetch().json()
        body["data"][0].update(id="tiny-sft", chat_template="alpaca")
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page = browser.new_page()
    page.route("**/v1/models", chat_model)
    page.goto(server.url + "/")
    page.evaluate("localStorage.clear()")
    page.reload()
    page.wait_for_function("document.getElementById('model-name').textContent.includes('tiny-sft')")
    assert page.get_attribute("#mode-chat", "aria-selected") == "true"
    page.close()


def test_failed_message_leaves_the_conversation(browser, server):
    page = _fresh_page(browser, server)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") else None)
    page.click("#mode-chat")
    _set_max_tokens(page, 8)
    _send(page, "First")
    assert page.locator(".msg").count() == 2

    # A real 400 from the server (max_tokens 0): the turn is not kept, its text is back.
    _set_max_tokens(page, 0)
    _send(page, "Second")
    assert "The server answered 400" in page.text_content("#error-text")
    assert page.locator(".msg").count() == 2
    assert page.input_value("#prompt") == "Second"
    assert [m["content"] for m in _stored(page)[0]["messages"]][0] == "First"
    assert len(_stored(page)[0]["messages"]) == 2
    # The banner sits above the composer and covers no message.
    banner = page.locator("#error").bounding_box()
    first = page.locator(".msg").first.bounding_box()
    composer = page.locator("#composer").bounding_box()
    assert banner["y"] >= first["y"] + first["height"] and banner["y"] + banner["height"] <= composer["y"]
    page.screenshot(path=str(ARTIFACTS / "web-error.png"))

    # The server unreachable: the same, and no duplicate when the text is sent again.
    _set_max_tokens(page, 8)
    page.route("**/v1/**", lambda route: route.abort())
    _send(page)
    assert "Cannot reach the server" in page.text_content("#error-text")
    assert page.locator(".msg").count() == 2 and page.input_value("#prompt") == "Second"
    page.unroute("**/v1/**")
    bodies.clear()
    _send(page)
    assert page.is_hidden("#error")
    assert [m["content"] for m in bodies[-1]["messages"]][::2] == ["First", "Second"]
    stored = _stored(page)[0]["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]

    # A conversation stored by an older page with a failed turn in it: that turn is left out.
    broken = {"id": "1", "title": "old", "messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "failed long ago"}]}
    page.evaluate(f"localStorage.setItem('lyre.conversations.v1', JSON.stringify([{json.dumps(broken)}]))")
    page.reload()
    page.wait_for_function("document.getElementById('model-name').textContent.includes('tiny')")
    page.click("#history li .open")
    bodies.clear()
    _send(page, "c")
    assert [m["content"] for m in bodies[-1]["messages"]] == ["a", "b", "c"]
    assert not errors, errors
    page.close()


def test_phone_error_layout(browser, server):
    page = _fresh_page(browser, server, 390, 800)
    page.click("#mode-chat")
    _set_max_tokens(page, 8)
    _send(page, "Hi")
    page.route("**/v1/**", lambda route: route.abort())
    _send(page, "Are you there?")
    assert page.is_visible("#error") and page.is_visible(".msg.user")
    banner = page.locator("#error").bounding_box()
    first = page.locator(".msg").first.bounding_box()
    assert banner["y"] >= first["y"] + first["height"] and banner["x"] + banner["width"] <= 390
    page.screenshot(path=str(ARTIFACTS / "web-phone-error.png"))
    page.close()


def test_long_conversation_in_a_small_context_keeps_room_for_answers(browser, server):
    """The tiny model's context is 256 tokens; each question is ~100 tokens, each answer 60.
    From the second turn on, the prompt would leave only a few tokens for the answer: the page
    leaves out the oldest exchanges first, so every answer gets its 60 tokens."""
    page = _fresh_page(browser, server)
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.url.endswith("/v1/chat/completions") else None)
    page.click("#mode-chat")
    page.click("#toggle-settings")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "60")
    page.click("#toggle-settings")
    question = "Sing, O goddess, the anger of Achilles son of Peleus, that brought countless ills "
    for turn in range(4):
        _send(page, f"{turn}. {question}")
    metas = [m.text_content() for m in page.locator(".msg.assistant .meta").all()]
    assert len(metas) == 4, metas
    for meta in metas:  # each answer ran to max_tokens or ended on its own, never cut short
        assert meta.startswith("60 tokens") or "finished" in meta, metas
    assert any("left out to fit the context" in meta for meta in metas[1:]), metas
    assert len(bodies[-1]["messages"]) < 7  # old exchanges were left out of the request
    # One stats line per answer, none doubled in the footer; answers start with no blank.
    assert page.text_content("#stats") == ""
    for content in page.locator(".msg.assistant .content").all():
        text = content.text_content()
        assert text == text.lstrip(), repr(text[:20])
    page.screenshot(path=str(ARTIFACTS / "web-small-context.png"), full_page=True)
    page.close()


def test_classifier_page_labels_a_text(browser, tmp_path_factory):
    """A classifier run's / (lyre serve on a classifier): type a text, see every label's
    probability, the most probable first; the request shown carries the server's address."""
    from classify_util import tiny_classifier

    from lyre.classify.predict import load_classifier
    from lyre.serve import ServeSettings
    from lyre.serve.server import start_background

    ARTIFACTS.mkdir(exist_ok=True)
    clf = load_classifier(tiny_classifier(tmp_path_factory.getbasetemp()), device="cpu")
    with start_background(clf, ServeSettings(api_key="k")) as srv:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url + "/")
        page.fill("#text", "Congratulations! voucher waiting, reply 04567891234 now")
        page.click("#send")
        page.wait_for_selector("#error:not([hidden])")  # no key yet: the server's 401, shown
        assert "API key" in page.inner_text("#error")
        page.fill("#api_key", "k")
        page.click("#send")
        page.wait_for_selector("#result:not([hidden])")
        rows = page.locator("#result tbody tr")
        assert rows.count() == 2 and rows.nth(0).get_attribute("class") == "best"
        assert rows.nth(0).inner_text().startswith("spam") and page.is_hidden("#error")
        assert srv.url + "/v1/classify" in page.inner_text("#curl")
        page.screenshot(path=str(ARTIFACTS / "web-classifier.png"), full_page=True)
        page.close()
    assert errors == []
