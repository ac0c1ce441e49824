"""`lyre serve` on a classifier run: POST /v1/classify, OpenAI-shaped errors, the CLI hook."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from classify_util import tiny_classifier
from fastapi.testclient import TestClient
from serve_util import wait_health

from lyre.classify.predict import load_classifier
from lyre.serve import ServeSettings, create_app
from lyre.serve.schemas import MAX_TEXTS

SPAM = "Congratulations! voucher waiting, reply 04567891234 now"
HAM = "thanks meet me at the station tonight"


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def client(run):
    with TestClient(create_app(load_classifier(run, device="cpu"))) as c:
        yield c


def test_classify_route_answers_labels_and_probabilities(client, run):
    r = client.post("/v1/classify", json={"input": [SPAM, HAM]})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == run.name
    assert [d["label"] for d in body["data"]] == ["spam", "ham"]
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(0.5 < d["probability"] <= 1 and abs(sum(d["probabilities"].values()) - 1) < 1e-5
               for d in body["data"])
    assert body["usage"]["prompt_tokens"] == sum(d["tokens"] for d in body["data"]) > 0
    one = client.post("/v1/classify", json={"input": SPAM, "model": run.name}).json()
    assert one["data"][0]["probability"] == pytest.approx(body["data"][0]["probability"], abs=1e-6)
    assert client.get("/v1/models").json()["data"][0]["id"] == run.name
    health = client.get("/health").json()
    assert health["task"] == "classify" and sorted(health["labels"]) == ["ham", "spam"]


@pytest.mark.parametrize("payload, status, param", [
    ({"input": ""}, 400, "input"),
    ({"input": [SPAM, "  "]}, 400, "input[1]"),
    ({"input": []}, 400, "input"),
    ({"input": [SPAM] * (MAX_TEXTS + 1)}, 400, "input"),
    ({"input": SPAM, "model": "other"}, 404, "model"),
    ({"input": SPAM, "temperature": 1}, 400, "temperature"),
    ({"text": SPAM}, 400, None),
])
def test_bad_requests_get_openai_errors(client, payload, status, param):
    r = client.post("/v1/classify", json=payload)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param


def test_a_classifier_does_not_generate(client):
    for path in ("/v1/completions", "/v1/chat/completions"):
        r = client.post(path, json={"model": "x", "prompt": "hi"})
        assert r.status_code == 400 and "/v1/classify" in r.json()["error"]["message"]


def test_api_key(run):
    app = create_app(load_classifier(run, device="cpu"), ServeSettings(api_key="k"))
    with TestClient(app) as c:
        assert c.post("/v1/classify", json={"input": SPAM}).status_code == 401
        ok = c.post("/v1/classify", json={"input": SPAM}, headers={"Authorization": "Bearer k"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200  # public, like the generation server's


def test_lyre_serve_on_a_classifier_run(run):
    from lyre.serve.server import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "lyre", "serve", str(run), "--port", str(port),
                             "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_health(url, proc=proc)
        r = httpx.post(url + "/v1/classify", json={"input": SPAM}, timeout=30)
        assert r.status_code == 200 and r.json()["data"][0]["label"] == "spam"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert b"/v1/classify" in err


# ----------------------------------------------------------------------------------------------
# One app builder: a classifier's app has what a language model's has (issue 19, defect 6)


def _samples(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_and_access_log_count_classify_requests(run, caplog):
    app = create_app(load_classifier(run, device="cpu"))
    with TestClient(app) as c, caplog.at_level("INFO", logger="lyre.serve.access"):
        tokens = c.post("/v1/classify", json={"input": [SPAM, HAM]}).json()["usage"]["prompt_tokens"]
        assert c.post("/v1/classify", json={"input": ""}).status_code == 400
        m = _samples(c.get("/metrics").text)
    ok = (("method", "POST"), ("route", "/v1/classify"), ("status", "200"))
    bad = (("method", "POST"), ("route", "/v1/classify"), ("status", "400"))
    assert m[("lyre_http_requests_total", ok)] == 1 and m[("lyre_http_requests_total", bad)] == 1
    assert m[("lyre_prompt_tokens_total", ())] == tokens
    assert not any(name.startswith("lyre_decode_steps") for name, _ in m)  # no scheduler here
    assert any('"POST /v1/classify HTTP/1.1" 200' in r.getMessage() for r in caplog.records)


def test_the_generation_servers_limits_and_pages(run):
    app = create_app(load_classifier(run, device="cpu"), ServeSettings(max_body_bytes=1024))
    with TestClient(app) as c:
        big = c.post("/v1/classify", json={"input": "x" * 2000})
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        broken = c.post("/v1/classify", content=b"{nope", headers={"Content-Type": "application/json"})
        assert broken.status_code == 400 and "\n" not in broken.json()["error"]["message"]
        assert c.get("/v1/models/" + run.name).json()["id"] == run.name
        assert c.get("/v1/models/other").status_code == 404
        assert c.get("/docs").status_code == 200
        assert "/v1/classify" in c.get("/openapi.json").json()["paths"]
        missing = c.get("/nowhere")
        assert missing.status_code == 404 and "/docs" in missing.json()["error"]["message"]


def test_get_root_is_a_page_that_says_how_to_call_the_classifier(run):
    with TestClient(create_app(load_classifier(run, device="cpu"), ServeSettings(api_key="k"))) as c:
        r = c.get("/")
        assert c.get("/static/classify.js").status_code == 200
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert run.name in r.text and "ham, spam" in r.text and "/v1/classify" in r.text
    assert "Authorization: Bearer KEY" in r.text and "{{" not in r.text


def test_a_draining_classifier_refuses_new_texts(run):
    app = create_app(load_classifier(run, device="cpu"))
    with TestClient(app) as c:
        app.state.serve.begin_drain()  # what SIGTERM does (lyre.serve.server._Server)
        r = c.post("/v1/classify", json={"input": SPAM})
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert c.get("/health").json()["status"] == "draining"


def test_load_served_picks_the_classifier(run):
    from lyre.classify.predict import Classifier
    from lyre.core.errors import LyreError
    from lyre.serve import load_served

    clf = load_served(run, device="cpu")
    assert isinstance(clf, Classifier)
    with pytest.raises(LyreError, match="classifier"):
        create_app(clf, ServeSettings(rag_index="idx"))
