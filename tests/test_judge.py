"""`lyre judge`: exact scores from a scripted OpenAI-compatible endpoint, replies that are not
numbers counted, retries with backoff, bounded concurrency, endpoints that are down, slow, refuse
or answer garbage; and a real `lyre serve` of a tiny run as the judge."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from finetune_util import base_run

from lyre.cli import main
from lyre.core.errors import LyreError
from lyre.eval.judge import JudgeSettings, judge, judge_file, parse_score


def test_parse_score():
    assert parse_score("85") == 85
    assert parse_score(" Score: 85/100") == 85
    assert parse_score("100.") == 100
    assert parse_score("0") == 0
    assert parse_score("I would say 7 out of 10") == 7
    for reply in ("", "great answer", "1000", "8.5", "-", "101"):
        assert parse_score(reply) is None, reply


class Scripted:
    """A tiny OpenAI-compatible chat endpoint whose reply depends on a marker in the prompt."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay, self.lock = delay, threading.Lock()
        self.in_flight = self.max_in_flight = self.requests = 0
        self.failed_once: set[str] = set()
        self.auth: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.auth.append(self.headers.get("Authorization"))
                with outer.lock:
                    outer.in_flight += 1
                    outer.requests += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                time.sleep(outer.delay)
                with outer.lock:  # before the reply: once it is sent, that client's next request may arrive
                    outer.in_flight -= 1
                self.answer(body["messages"][0]["content"])

            def answer(self, prompt: str):
                marker = re.search(r"response `(\S+)`", prompt).group(1)
                if marker.startswith("score:"):
                    return self.send(200, {"choices": [{"message": {"content": marker[6:]}}]})
                if marker == "garbage":
                    return self.send(200, {"choices": [{"message": {"content": "It is quite good!"}}]})
                if marker == "fail-once" and marker + prompt not in outer.failed_once:
                    outer.failed_once.add(marker + prompt)
                    return self.send(500, {"error": {"message": "overloaded"}})
                if marker == "fail-once":
                    return self.send(200, {"choices": [{"message": {"content": "70"}}]})
                if marker == "always-500":
                    return self.send(500, {"error": {"message": "boom"}})
                if marker == "not-json":
                    return self.send(200, None, raw=b"<html>proxy error</html>")
                if marker == "slow":
                    time.sleep(1.0)
                    return self.send(200, {"choices": [{"message": {"content": "50"}}]})
                if marker == "unauthorized":
                    return self.send(401, {"error": {"message": "bad API key"}})
                return self.send(404, {"error": {"message": "no such model"}})

            def send(self, status, obj, raw=None):
                data = raw if raw is not None else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def items(*markers):
    return [{"prompt": f"question {i}", "reference": "ref", "response": m} for i, m in enumerate(markers)]


def settings(url, **kw):
    return JudgeSettings(base_url=url, model="judge", backoff=0.01, **kw)


def test_exact_scores_non_numbers_retries_and_failures():
    with Scripted() as endpoint:
        report = judge(items("score:80", "score:60", "garbage", "fail-once", "always-500", "not-json",
                             "slow", "score:100"),
                       settings(endpoint.url, timeout=0.5, retries=2, api_key="sk-1"))
    assert [v.score for v in report.verdicts] == [80, 60, None, 70, None, None, None, 100]
    assert report.mean == pytest.approx((80 + 60 + 70 + 100) / 4)
    assert [v.index for v in report.not_numbers] == [2] and report.not_numbers[0].reply == "It is quite good!"
    failed = {v.index: v.error for v in report.failed}
    assert failed.keys() == {4, 5, 6}
    assert failed[4].startswith("HTTP 500: boom") and "not an OpenAI chat completion" in failed[5]
    assert "no reply within 0.5 s" in failed[6]
    assert set(endpoint.auth) == {"Bearer sk-1"}
    summary = report.summary()
    assert "mean score 77.50 over 4 of 8 responses" in summary
    assert "1 reply was not a number 0-100" in summary and "'It is quite good!'" in summary
    assert "3 request(s) failed after 2 retries" in summary


def test_concurrency_is_bounded():
    with Scripted(delay=0.1) as endpoint:
        report = judge(items(*[f"score:{i}" for i in range(12)]), settings(endpoint.url, concurrency=3))
    assert [v.score for v in report.verdicts] == list(range(12))
    assert 2 <= endpoint.max_in_flight <= 3


def test_an_endpoint_that_is_down_slow_or_refusing_is_one_error(tmp_path):
    from lyre.serve.server import free_port

    with pytest.raises(LyreError, match="failed: cannot connect"):
        judge(items("score:1"), settings(f"http://127.0.0.1:{free_port()}/v1", retries=1))
    with Scripted() as endpoint:
        with pytest.raises(LyreError, match="no reply within 0.3 s"):
            judge(items("slow", "score:1"), settings(endpoint.url, timeout=0.3, retries=1))
        with pytest.raises(LyreError, match="HTTP 401: bad API key"):
            judge(items("unauthorized"), settings(endpoint.url))
        with pytest.raises(LyreError, match="HTTP 404: no such model"):
            judge(items("score:5", "who-knows"), settings(endpoint.url))
        requests = endpoint.requests
        with pytest.raises(LyreError, match="HTTP 401"):  # refused: not retried
            judge(items("unauthorized"), settings(endpoint.url, retries=5))
        assert endpoint.requests == requests + 1
    with pytest.raises(LyreError, match="must start with http"):
        judge(items("x"), JudgeSettings(base_url="localhost:1", model="m"))


def test_cli_saves_every_score_and_fails_in_one_line(tmp_path, capsys):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps({"responses": items("score:40", "garbage", "score:90")}))
    with Scripted() as endpoint:
        assert main(["judge", str(path), "--base-url", endpoint.url, "--model", "j"]) == 0
    out = capsys.readouterr().out
    assert "mean score 65.00 over 2 of 3 responses" in out and "judge.json" in out
    saved = json.loads((tmp_path / "judge.json").read_text())
    assert [i["score"] for i in saved["items"]] == [40, None, 90]
    assert saved["items"][1]["judge_reply"] == "It is quite good!" and saved["not_numbers"] == 1
    # the book's layout is read too
    book = tmp_path / "book.json"
    book.write_text(json.dumps([{"instruction": "Q", "input": "", "output": "A", "model_response": "score:12"}]))
    with Scripted() as endpoint:
        assert main(["judge", str(book), "--base-url", endpoint.url, "--model", "j",
                     "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["mean"] == 12
    from lyre.serve.server import free_port

    capsys.readouterr()
    assert main(["judge", str(path), "--base-url", f"http://127.0.0.1:{free_port()}/v1", "--model", "j",
                 "--retries", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lyre: error: the judge at") and "\n" not in err
    (tmp_path / "bad.json").write_text("{")
    assert main(["judge", str(tmp_path / "bad.json"), "--base-url", "http://x", "--model", "j"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_a_tiny_lyre_serve_as_the_judge(tmp_path_factory, tmp_path):
    """A real OpenAI-compatible server: the tiny run's replies are not numbers, and every one
    of them is accounted for and saved; a judge that scored nothing is an error, not a mean of
    n/a (issue 19.13)."""
    from lyre.generate.runs import load_run
    from lyre.serve import ServeSettings
    from lyre.serve.server import start_background

    run = load_run(base_run(tmp_path_factory), device="cpu")
    path = tmp_path / "responses.json"
    path.write_text(json.dumps({"responses": items("The sky is blue.", "Green.", "It is red.")}))
    with start_background(run, ServeSettings(model_name="tiny")) as srv:
        with pytest.raises(LyreError, match="scored none of the 3 responses: no reply was a number"):
            judge_file(path, JudgeSettings(base_url=srv.url + "/v1", model="tiny", max_tokens=8))
    saved = json.loads((tmp_path / "judge.json").read_text())
    assert saved["count"] == 3 and saved["failed"] == 0 and saved["not_numbers"] == 3
    assert all(item["judge_reply"] is not None for item in saved["items"])


def test_nothing_scored_is_one_line_and_exit_2(tmp_path, capsys):
    """Issue 19.13: `lyre judge` used to exit 0 with "mean score n/a over 0 of 55"."""
    path = tmp_path / "responses.json"
    path.write_text(json.dumps({"responses": items("garbage", "garbage")}))
    with Scripted() as endpoint:
        assert main(["judge", str(path), "--base-url", endpoint.url, "--model", "j"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lyre: error: the judge j scored none of the 2")
    assert "no reply was a number 0-100 (e.g. 'It is quite good!')" in err
    assert json.loads((tmp_path / "judge.json").read_text())["not_numbers"] == 2
    # the first request answered, every other one failed: the first failure's reason is said
    path.write_text(json.dumps({"responses": items("garbage", "always-500", "always-500")}))
    with Scripted() as endpoint:
        code = main(["judge", str(path), "--base-url", endpoint.url, "--model", "j", "--retries", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "2 request(s) failed after 0 retries (first: HTTP 500: boom) and 1 repl" in err
