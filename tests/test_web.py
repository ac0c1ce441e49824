"""The chat page in a real browser: Debian's chromium, headless, driven by Playwright.

It loads the page from a live `lyre serve` on 127.0.0.1, sends a message, watches the answer
stream in, switches to completion mode, and checks the message shown when the server cannot be
reached. Screenshots go to test-artifacts/ (gitignored). Without chromium (or the playwright
package) the test skips and says so; `.ci/run` installs chromium.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from serve_util import tiny_served_run

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def _chromium() -> str | None:
    for candidate in (os.environ.get("LYRE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
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

    from lyre.runs import load_run

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
    stats = page.text_content("#stats")
    assert "tokens/s" in stats and "token" in stats, stats
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
    page.screenshot(path=str(ARTIFACTS / "web-phone.png"))
    page.click("#toggle-sidebar")
    time.sleep(0.3)  # the drawer slides in
    assert page.evaluate("document.getElementById('sidebar').getBoundingClientRect().left") >= 0
    page.screenshot(path=str(ARTIFACTS / "web-phone-history.png"))
    page.close()
