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
from lyre.serve.classify_routes import MAX_TEXTS, create_classify_app
from lyre.serve.settings import ServeSettings

SPAM = "Congratulations! voucher waiting, reply 04567891234 now"
HAM = "thanks meet me at the station tonight"


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def client(run):
    with TestClient(create_classify_app(load_classifier(run, device="cpu"))) as c:
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
    app = create_classify_app(load_classifier(run, device="cpu"), ServeSettings(api_key="k"))
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
