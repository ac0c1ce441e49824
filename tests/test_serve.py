"""`lyre serve`: the official openai client against a live server, errors, concurrency, shutdown.

Every server here listens on 127.0.0.1 (a free port) and serves a tiny model trained for the
test session; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import openai
import pytest
import torch
from serve_util import NO_CHROMIUM, chromium_path, sse_events, wait_health, with_template

from lyre.engine import Engine
from lyre.generate.runs import load_run
from lyre.serve import ServeSettings, create_app
from lyre.serve.scheduler import Scheduler, SchedulerSettings
from lyre.serve.server import free_port, start_background

KEY = "sk-test-123"


@pytest.fixture(scope="module")
def server(run):
    """An open server (no API key)."""
    with start_background(run, ServeSettings(model_name="tiny")) as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed(run):
    """A server that wants `Authorization: Bearer sk-test-123`, with the alpaca template."""
    with start_background(run, ServeSettings(model_name="tiny", api_key=KEY, chat_template="alpaca")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


# ----------------------------------------------------------------------------------------------
# The openai client


def test_models_list_and_get(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_completion_usage_and_length(client, run):
    r = client.completions.create(model="tiny", prompt="Sing, O goddess", max_tokens=7, seed=1)
    assert r.object == "text_completion" and len(r.choices) == 1
    choice = r.choices[0]
    assert choice.finish_reason in ("length", "stop")
    prompt_tokens = len(run.tokenizer.encode("Sing, O goddess"))
    assert r.usage.prompt_tokens == prompt_tokens
    assert r.usage.total_tokens == prompt_tokens + r.usage.completion_tokens
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == 7


def test_seeded_completion_is_reproducible_streamed_or_not(client):
    args = dict(model="tiny", prompt="The wrath of", max_tokens=12, seed=42, temperature=0.9,
                extra_body={"top_k": 20, "repetition_penalty": 1.2})
    first = client.completions.create(**args).choices[0].text
    again = client.completions.create(**args).choices[0].text
    assert first == again
    stream = client.completions.create(stream=True, **args)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == first
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_completion_n_echo_and_prompt_list(client):
    r = client.completions.create(model="tiny", prompt=["Achilles", "Hector"], n=2, max_tokens=4,
                                  echo=True, seed=3)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert r.choices[0].text.startswith("Achilles") and r.choices[3].text.startswith("Hector")
    ids = client.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=3)
    assert ids.usage.prompt_tokens == 3


def test_completion_stop_string_cut_from_output(client):
    base = client.completions.create(model="tiny", prompt="Sing", max_tokens=20, temperature=0)
    text = base.choices[0].text
    if base.choices[0].finish_reason != "length" or len(text) < 6:
        pytest.skip("the tiny model ended early; no stop string to pick")
    stop = text[3:5]
    r = client.completions.create(model="tiny", prompt="Sing", max_tokens=20, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[: text.index(stop)]


def test_completion_logprobs(client):
    r = client.completions.create(model="tiny", prompt="Sing", max_tokens=5, logprobs=0, seed=0)
    lp = r.choices[0].logprobs
    assert lp is not None and len(lp.token_logprobs) == r.usage.completion_tokens
    assert all(x <= 0 for x in lp.token_logprobs)


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=4, logprobs=True, seed=0)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens and all(t.logprob <= 0 for t in content)


def test_chat_completion_and_stream(client):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello, who are you? ✓"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, seed=5, n=2)
    assert r.object == "chat.completion" and len(r.choices) == 2
    for c in r.choices:
        assert c.message.role == "assistant" and isinstance(c.message.content, str)
        assert c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 16
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, seed=5,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish and finish[-1] in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    single = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, seed=5)
    assert text == single.choices[0].message.content


def test_chat_with_template_and_api_key(keyed, run):
    good = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0)
    r = good.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Name a hero."}],
                                     max_tokens=6, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    # The alpaca prompt is what the model saw.
    from lyre.chat.templates import get_template

    prompt = get_template("alpaca").render([{"role": "user", "content": "Name a hero."}])
    assert r.usage.prompt_tokens == len(run.tokenizer.encode(prompt))
    chunks = list(good.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    bad = openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.completions.create(model="tiny", prompt="x", max_tokens=1)
    assert e.value.body["code"] == "invalid_api_key"
    r = httpx.post(keyed.url + "/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    # 401 comes before looking at the body, and the public routes stay public.
    assert httpx.post(keyed.url + "/v1/completions", content=b"{not json").status_code == 401
    assert httpx.get(keyed.url + "/health").status_code == 200
    assert httpx.get(keyed.url + "/").status_code == 200
    assert "bearer" in json.dumps(httpx.get(keyed.url + "/openapi.json").json()["components"]).lower()


# ----------------------------------------------------------------------------------------------
# Bad input: always a 4xx in OpenAI's error shape


def _post(server, path, body=None, content=None, headers=None):
    return httpx.post(server.url + path, json=body, content=content, headers=headers, timeout=30)


BAD = [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"", 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", {"prompt": "x"}, 400, "model"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "n": 1000}, 400, "n"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "top_k": -1}, 400, "top_k"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "repetition_penalty": 0}, 400, "repetition_penalty"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "repetition_penalty": 5e-324}, 400, "repetition_penalty"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "stop": [1]}, 400, "stop"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "presence_penalty": 1}, 400, "presence_penalty"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "bogus": 1}, 400, "bogus"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "seed": "abc"}, 400, "seed"),
    ("/v1/completions", {"model": "tiny", "prompt": [99999]}, 400, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "word " * 300}, 400, "prompt"),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, None),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x " * 600}]}, 400, "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function"}]}, 400, "tools"),
]


@pytest.mark.parametrize("path,body,status,param", BAD)
def test_bad_requests_get_openai_errors(server, path, body, status, param):
    if isinstance(body, bytes):
        r = _post(server, path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = _post(server, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param or (err["param"] or "").startswith(param), err


def test_context_length_error_code(server):
    r = _post(server, "/v1/completions", {"model": "tiny", "prompt": "word " * 300})
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "256" in r.json()["error"]["message"]


def test_body_size_limit(run):
    with start_background(run, ServeSettings(model_name="tiny", max_body_bytes=4096)) as srv:
        big = json.dumps({"model": "tiny", "prompt": "x" * 10_000}).encode()
        r = _post(srv, "/v1/completions", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: chunked transfer encoding
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        r = _post(srv, "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert _post(srv, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1}).status_code == 200


def test_unknown_route_and_method(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server.url + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_openapi_schema_and_page(server):
    schema = httpx.get(server.url + "/openapi.json").json()
    for path in ("/v1/models", "/v1/completions", "/v1/chat/completions", "/health"):
        assert path in schema["paths"]
    assert "422" not in json.dumps(schema["paths"])
    props = schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert {"top_k", "repetition_penalty", "stop", "seed", "n", "stream"} <= set(props)
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<textarea" in page.text
    for name in ("app.js", "app.css", "favicon.svg"):
        r = httpx.get(server.url + "/static/" + name)
        assert r.status_code == 200
        text = r.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "http://" not in text and "https://" not in text  # works offline: no CDN


# ----------------------------------------------------------------------------------------------
# Concurrency


async def _stream_one(http: httpx.AsyncClient, url: str, body: dict) -> tuple[str, str | None, int]:
    text, finish, n = "", None, 0
    async with http.stream("POST", url + "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        lines = [line async for line in r.aiter_lines()]
    events = sse_events(lines)
    assert events[-1] == "[DONE]"
    for e in events[:-1]:
        for c in e["choices"]:
            text += c["text"]
            finish = c["finish_reason"] or finish
            n += 1
    return text, finish, n


def test_32_concurrent_streams_finish_and_health_stays_responsive(client, server):
    # A greedy reference tells which stop string each client will hit.
    ref = client.completions.create(model="tiny", prompt="Sing", max_tokens=24, temperature=0)
    ref_text = ref.choices[0].text
    stop = ref_text[4:6] if ref.choices[0].finish_reason == "length" and len(ref_text) > 8 else None

    async def main():
        active_seen: list[int] = []  # rows generating, as each /health answer reported them
        done = asyncio.Event()
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as http:
            async def poll_health():
                while not done.is_set():
                    r = await http.get(server.url + "/health")
                    assert r.status_code == 200
                    active_seen.append(r.json()["active"])
                    await asyncio.sleep(0.05)

            bodies = []
            for i in range(32):
                if i % 2 == 0:
                    bodies.append({"model": "tiny", "prompt": f"Client {i} says", "max_tokens": 6 + i % 5,
                                   "seed": i})
                else:
                    bodies.append({"model": "tiny", "prompt": "Sing", "max_tokens": 24, "temperature": 0,
                                   **({"stop": [stop]} if stop else {})})
            poller = asyncio.create_task(poll_health())
            results = await asyncio.gather(*(_stream_one(http, server.url, b) for b in bodies))
            done.set()
            await poller
        return bodies, results, active_seen

    bodies, results, active_seen = asyncio.run(main())
    for body, (text, finish, _) in zip(bodies, results, strict=True):
        if body.get("temperature") == 0:
            if stop:
                assert finish == "stop" and text == ref_text[: ref_text.index(stop)]
            else:
                assert finish == ref.choices[0].finish_reason
        else:
            assert finish in ("length", "stop")
    # /health was answered while rows were generating: the event loop never waits for the model.
    assert any(active > 0 for active in active_seen), active_seen
    health = httpx.get(server.url + "/health").json()
    assert health["active"] == 0 and health["queued"] == 0


class SlowBatch:
    """The engine's batch, with a pause before every decode step (so requests overlap for sure)."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def step(self):
        time.sleep(self.delay)
        return self.inner.step()


def _slow_server(run, delay=0.05, **settings):
    s = ServeSettings(model_name="tiny", **settings)
    engine = Engine(run.model, run.tokenizer, device=run.device)
    scheduler = Scheduler(engine, settings=SchedulerSettings(max_batch=s.max_batch, max_queue=s.max_queue),
                          batch=SlowBatch(engine.new_batch(s.max_batch), delay))
    return create_app(run, s, scheduler=scheduler)


def _background_app(app):
    import uvicorn

    from lyre.serve.server import BackgroundServer, _Server

    port = free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"),
                     app.state.serve, install_signals=False)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return BackgroundServer(app, server, thread, "127.0.0.1", port)


def test_killed_client_frees_its_slot(run, tmp_path):
    with _background_app(_slow_server(run, delay=0.05)) as srv:
        body = {"model": "tiny", "prompt": "Sing", "max_tokens": 60, "temperature": 0}
        if httpx.post(srv.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["finish_reason"] != "length":
            pytest.skip("the tiny model ends this greedy answer early; nothing to interrupt")
        before = httpx.get(srv.url + "/health").json()["generated_tokens"]
        client_code = textwrap.dedent(f"""
            import httpx, sys
            with httpx.stream("POST", "{srv.url}/v1/completions", timeout=60,
                              json={{**{body!r}, "stream": True}}) as r:
                for line in r.iter_lines():  # (leaving this loop would close the stream)
                    if line.startswith("data: "):
                        print("first", flush=True)
                        sys.stdin.read()  # hang, connection open, until killed
        """)
        proc = subprocess.Popen([sys.executable, "-c", client_code], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "first"
            assert httpx.get(srv.url + "/health").json()["active"] == 1
            proc.kill()
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        deadline = time.monotonic() + 10
        while httpx.get(srv.url + "/health").json()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        health = httpx.get(srv.url + "/health").json()
        assert health["active"] == 0
        # 60 tokens at >= 50 ms a step would take 3 s; the slot was freed well before.
        assert health["generated_tokens"] - before < 55

        # The same for a client that gives up on a non-streamed answer.
        before = health["generated_tokens"]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
        deadline = time.monotonic() + 10
        while httpx.get(srv.url + "/health").json()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        health = httpx.get(srv.url + "/health").json()
        assert health["active"] == 0 and health["generated_tokens"] - before < 55


def test_full_queue_gets_429_with_retry_after(run):
    app = _slow_server(run, delay=0.05, max_batch=1, max_queue=1)
    with _background_app(app) as srv:
        async def main():
            async with httpx.AsyncClient(timeout=60) as http:
                body = {"model": "tiny", "prompt": "Sing", "max_tokens": 20}
                first = asyncio.create_task(http.post(srv.url + "/v1/completions", json=body))
                # Polled with the same async client: a blocking call here would stall the loop
                # that sends the requests (and each new sync client loads the CA bundle).
                while (await http.get(srv.url + "/health")).json()["active"] < 1:
                    await asyncio.sleep(0.02)
                second = asyncio.create_task(http.post(srv.url + "/v1/completions", json=body))
                while (await http.get(srv.url + "/health")).json()["queued"] < 1:
                    await asyncio.sleep(0.02)
                third = await http.post(srv.url + "/v1/completions", json=body)
                return await first, await second, third

        first, second, third = asyncio.run(main())
        assert first.status_code == 200 and second.status_code == 200
        assert third.status_code == 429 and third.headers["retry-after"] == "1"
        assert third.json()["error"]["type"] == "rate_limit_error"
        # Draining (SIGTERM) refuses new work with 503.
        app.state.scheduler.begin_drain()
        r = httpx.post(srv.url + "/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert r.status_code == 503 and "retry-after" in r.headers
        assert httpx.get(srv.url + "/health").json()["status"] == "draining"


class FaultyBatch(SlowBatch):
    """Raises on its first decode step, like a bug would."""

    def step(self):
        if not getattr(self, "failed", False):
            self.failed = True
            raise RuntimeError("boom")
        return self.inner.step()


def test_failed_step_fails_its_requests_and_the_server_carries_on(run):
    engine = Engine(run.model, run.tokenizer, device=run.device)
    scheduler = Scheduler(engine, batch=FaultyBatch(engine.new_batch(4), 0))
    app = create_app(run, ServeSettings(model_name="tiny"), scheduler=scheduler)
    with _background_app(app) as srv:
        body = {"model": "tiny", "prompt": "Sing", "max_tokens": 5, "temperature": 0}
        r = httpx.post(srv.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 500 and r.json()["error"]["code"] == "generation_failed"
        r = httpx.post(srv.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        assert scheduler.failures == 1 and scheduler.stats()["active"] == 0


def test_tiny_temperature_is_greedy_not_a_crash(client):
    greedy = client.completions.create(model="tiny", prompt="Sing", max_tokens=6, temperature=0)
    tiny = client.completions.create(model="tiny", prompt="Sing", max_tokens=6, temperature=1e-300,
                                     extra_body={"repetition_penalty": 0.01})
    assert tiny.choices[0].finish_reason in ("stop", "length")
    plain = client.completions.create(model="tiny", prompt="Sing", max_tokens=6, temperature=1e-300)
    assert plain.choices[0].text == greedy.choices[0].text


def test_lyre_serve_cli_sigterm_is_graceful(run_dir, tmp_path):
    """`lyre serve` in its own process: streams, then SIGTERM mid-stream -> clean exit 0; at the
    default log level, one access line per request."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lyre", "serve", str(run_dir), "--port", str(port), "--api-key", KEY,
         "--model-name", "tiny", "--shutdown-timeout", "5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(url, proc=proc)
        headers = {"Authorization": f"Bearer {KEY}"}
        events = []
        with httpx.stream("POST", url + "/v1/chat/completions", headers=headers, timeout=60,
                          json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                                "max_tokens": 40, "stream": True}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and not events:
                    proc.send_signal(signal.SIGTERM)
                events.append(line)
        parsed = sse_events(events)
        assert parsed[-1] == "[DONE]"  # the in-flight stream finished cleanly
        assert proc.wait(30) == 0
        output = proc.stdout.read()
        posts = [line for line in output.splitlines() if '"POST /v1/chat/completions HTTP/1.1" 200' in line]
        assert len(posts) == 1 and posts[0].startswith("INFO:"), output
        assert '"GET /health HTTP/1.1" 200' in output  # wait_health's polls
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_lyre_serve_cli_bad_flags(run_dir, tmp_path):
    from lyre.cli import main

    assert main(["serve", str(run_dir), "--max-batch", "0"]) == 2
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert main(["serve", str(run_dir), "--template", "nope"]) == 2


def test_template_from_run_dir(run_dir, tmp_path):
    templated = with_template(run_dir, tmp_path / "alpaca-run", "alpaca")
    app = create_app(load_run(templated, device="cpu"), ServeSettings())
    assert app.state.model_name == "alpaca-run"
    from fastapi.testclient import TestClient

    with TestClient(app) as tc:
        model = tc.get("/v1/models").json()["data"][0]
        assert model["chat_template"] == "alpaca" and model["context_length"] == 256


def test_waiting_jobs_share_one_add_and_a_bad_one_fails_alone(run):
    """Requests that wait together are prefilled together; an invalid one fails only itself."""
    from lyre.engine import SamplingConfig
    from lyre.serve.scheduler import Done, Failed, Job, Piece

    engine = Engine(run.model, run.tokenizer, device=run.device)
    params = SamplingConfig(max_new_tokens=6, temperature=0)
    texts = ["Sing, O goddess", "the wrath", "of Peleus' son Achilles"]
    expected = [c.text for c in engine.generate(texts, params)]

    def serve_jobs(prompts):
        adds = []

        class CountingBatch(SlowBatch):
            def add(self, prompts, params, tags=None):
                adds.append(len(prompts))
                return self.inner.add(prompts, params, tags)

        scheduler = Scheduler(engine, batch=CountingBatch(engine.new_batch(8), 0))

        async def main():
            jobs = [Job(p, params) for p in prompts]
            for job in jobs:
                scheduler.submit(job)  # the worker has not started: they all wait
            scheduler.start()
            outcomes = []
            for job in jobs:
                text = ""
                while not isinstance(event := await job.events.get(), Done | Failed):
                    assert isinstance(event, Piece)
                    text += event.text
                outcomes.append(text if isinstance(event, Done) else event.status)
            return outcomes

        try:
            return asyncio.run(main()), adds
        finally:
            scheduler.stop()

    prompts = [engine.encode(t) for t in texts]
    outcomes, adds = serve_jobs(prompts)
    assert outcomes == expected and adds == [3]
    outcomes, adds = serve_jobs(prompts[:2] + [[engine.vocab_size + 5]] + prompts[2:])
    assert outcomes == expected[:2] + [400] + expected[2:]
    assert adds == [4, 1, 1, 1, 1]  # together first; then one by one to fail the bad one alone


def test_only_loopback_hosts_count_as_private():
    """`lyre serve --host` other than these, without an API key, prints a warning."""
    from lyre.serve.server import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::") and not _is_loopback("192.168.1.5")
    assert not _is_loopback("myhost.example")


# ----------------------------------------------------------------------------------------------
# Error messages name the client's field and the real rule, never pydantic's internals

CLIENT_PATH = r"^[a-z_]+(\[\d+\]|\.[a-z_]+)*$"  # stop, stop[0], messages[0].content, ...

MESSAGES = [
    ({"prompt": "x"}, "missing required parameter: model", "model"),
    ({"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop: at most 4 sequences", "stop"),
    ({"model": "tiny", "prompt": "x", "stop": [1]}, "stop[0]: must be a string; got 1", "stop[0]"),
    ({"model": "tiny", "prompt": "x", "stop": ""}, "stop: must not be empty", "stop"),
    ({"model": "tiny", "prompt": "x", "stop": "a" * 300}, "stop: at most 256 characters", "stop"),
    ({"model": "tiny", "prompt": 5}, "prompt: must be a string, a list of strings, a list of token "
     "ids or a list of token id lists; got 5", "prompt"),
    ({"model": "tiny", "prompt": []}, "prompt: must not be empty", "prompt"),
    ({"model": "tiny", "prompt": ["a"] * 9}, "prompt: at most 8 prompts", "prompt"),
    ({"model": "tiny", "prompt": [3, -1]}, "prompt[1]: must be >= 0; got -1", "prompt[1]"),
    ({"model": "tiny", "prompt": "x", "top_p": 1.5}, "top_p: must be <= 1.0; got 1.5", "top_p"),
    ({"model": "tiny", "prompt": "x", "seed": "abc"}, 'seed: must be an integer; got "abc"', "seed"),
    ({"model": "tiny", "prompt": "x", "logprobs": 6}, "logprobs: must be <= 5; got 6", "logprobs"),
    ({"model": "tiny", "prompt": "x", "suffix": "!"}, "suffix is not supported; leave it out", "suffix"),
    ({"model": "tiny", "prompt": "x", "stream_options": {"usage": True}},
     "unrecognized request argument: stream_options.usage", "stream_options.usage"),
]


@pytest.mark.parametrize("body,message,param", MESSAGES)
def test_error_messages_name_the_field_and_the_limit(server, body, message, param):
    r = _post(server, "/v1/completions", body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["message"], err["param"]) == (message, param)


CHAT_MESSAGES = [
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
     "messages[0].role: must be 'system', 'developer', 'user', 'assistant' or 'tool'; got \"wizard\"",
     "messages[0].role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 5}]},
     'messages[0].content: must be a string or a list of {"type": "text", "text": "..."} parts; got 5',
     "messages[0].content"),
    ({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image", "text": "x"}]}]},
     "messages[0].content[0].type: must be 'text'; got \"image\"", "messages[0].content[0].type"),
    ({"model": "tiny", "messages": [{"content": "x"}]}, "missing required parameter: messages[0].role",
     "messages[0].role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 21},
     "top_logprobs: must be <= 20; got 21", "top_logprobs"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
     "top_logprobs needs logprobs: true", "top_logprobs"),
]


@pytest.mark.parametrize("body,message,param", CHAT_MESSAGES)
def test_chat_error_messages(server, body, message, param):
    r = _post(server, "/v1/chat/completions", body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["message"], err["param"]) == (message, param)


@pytest.mark.parametrize("content,headers,expected", [
    (b"", {"Content-Type": "application/json"}, "the request body is empty"),
    (b"", {}, "the request body is empty"),
    (b"  \n", {"Content-Type": "application/json"}, "the request body is empty"),
    (b'{"model": "tiny", "prompt": "x"}', {"Content-Type": "text/plain"}, "Content-Type: application/json"),
    (b"[1, 2]", {"Content-Type": "application/json"}, "must be a JSON object; got an array"),
    (b"null", {"Content-Type": "application/json"}, "the request body is empty"),
])
def test_body_that_is_empty_or_not_an_object(server, content, headers, expected):
    r = _post(server, "/v1/completions", content=content, headers=headers)
    assert r.status_code == 400
    err = r.json()["error"]
    assert expected in err["message"] and err["param"] is None


@pytest.mark.parametrize("path,body,status,param", BAD)
def test_param_is_always_the_clients_path(server, path, body, status, param):
    """No pydantic internals (`prompt.constrained-str`, `list[...]`) ever reach `param`."""
    if isinstance(body, bytes):
        r = _post(server, path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = _post(server, path, body)
    got = r.json()["error"]["param"]
    assert got is None or re.match(CLIENT_PATH, got), got


# ----------------------------------------------------------------------------------------------
# Log-probabilities with their most likely alternatives


def _last_logprobs(run, prompt: str) -> torch.Tensor:
    """log-softmax of the model's next-token logits after `prompt` (the reference)."""
    ids = torch.tensor([run.tokenizer.encode(prompt)])
    with torch.no_grad():
        logits, _ = run.model(ids, targets=ids)  # every position; the last one is the next token
    return torch.log_softmax(logits[0, -1].float(), dim=-1)


def test_chat_top_logprobs_are_the_models_alternatives(client, run):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=4, logprobs=True, top_logprobs=20, temperature=0)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens >= 1
    for item in content:
        tops = item.top_logprobs
        assert len(tops) == 20
        values = [t.logprob for t in tops]
        assert values == sorted(values, reverse=True)
        assert item.logprob == pytest.approx(values[0], abs=1e-6)  # greedy: the most likely
        assert all(bytes(t.bytes).decode("utf-8", "replace") == t.token for t in tops)
    from lyre.chat.templates import get_template

    prompt = get_template("plain").render([{"role": "user", "content": "Hi"}])
    expected = torch.topk(_last_logprobs(run, prompt), 20)
    first = content[0].top_logprobs
    assert [t.logprob for t in first] == pytest.approx(expected.values.tolist(), abs=1e-5)
    assert [t.token for t in first] == [run.tokenizer.token_bytes(i).decode("utf-8", "replace")
                                        for i in expected.indices.tolist()]


def test_engine_top_logprobs_come_from_the_same_log_softmax(run):
    """engine.token_logprobs: the alternatives beside each sampled token's log p."""
    from lyre.engine import SamplingConfig

    params = SamplingConfig(max_new_tokens=3, temperature=0, logprobs=True, top_logprobs=4)
    out = Engine(run.model, run.tokenizer).generate(["Sing"], params)[0]
    assert len(out.top_logprobs) == len(out.logprobs) == len(out.tokens)
    for token, logprob, top in zip(out.tokens, out.logprobs, out.top_logprobs, strict=True):
        assert len(top) == 4 and top[0] == (token, pytest.approx(logprob))  # greedy: the top one
    expected = torch.topk(_last_logprobs(run, "Sing"), 4)
    assert [i for i, _ in out.top_logprobs[0]] == expected.indices.tolist()
    plain = Engine(run.model, run.tokenizer).generate(["Sing"], SamplingConfig(max_new_tokens=2, logprobs=True))
    assert plain[0].top_logprobs is None and len(plain[0].logprobs) == len(plain[0].tokens)


def test_completion_logprobs_up_to_5(client, run):
    r = client.completions.create(model="tiny", prompt="Sing", max_tokens=5, logprobs=5, seed=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    for token, logprob, tops in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 5 <= len(tops) <= 6  # the 5 most likely, and the sampled token (OpenAI's rule)
        if "\ufffd" in token:  # part of a UTF-8 character: its key is spelled "bytes:\\x.."
            assert any(k.startswith("bytes:") and v == pytest.approx(logprob) for k, v in tops.items())
        else:
            assert tops[token] == pytest.approx(logprob)
        assert max(tops.values()) >= logprob
    expected = torch.topk(_last_logprobs(run, "Sing"), 5)
    first = sorted(lp.top_logprobs[0].values(), reverse=True)[:5]
    assert first == pytest.approx(expected.values.tolist(), abs=1e-5)
    zero = client.completions.create(model="tiny", prompt="Sing", max_tokens=3, logprobs=0, seed=0)
    assert zero.choices[0].logprobs.top_logprobs is None  # 0: the sampled tokens only


def test_streamed_top_logprobs_equal_the_answer(client):
    args = dict(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                logprobs=True, top_logprobs=3, seed=4)
    whole = client.chat.completions.create(**args).choices[0].logprobs.content
    streamed = [item for chunk in client.chat.completions.create(stream=True, **args)
                if chunk.choices and chunk.choices[0].logprobs
                for item in chunk.choices[0].logprobs.content]
    assert [(i.token, i.logprob, [t.token for t in i.top_logprobs]) for i in streamed] == \
        [(i.token, i.logprob, [t.token for t in i.top_logprobs]) for i in whole]


# ----------------------------------------------------------------------------------------------
# /docs works offline


def test_docs_pages_load_only_local_assets(server):
    assert httpx.get(server.url + "/redoc").status_code == 404  # ReDoc fetches its logo from a CDN
    for page in ("/docs",):
        r = httpx.get(server.url + page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert assets and all(a.startswith("/") for a in assets), assets  # nothing from a CDN
        assert "http://" not in r.text and "https://" not in r.text
        for asset in assets:
            assert httpx.get(server.url + asset).status_code == 200, asset
    bundle = httpx.get(server.url + "/docs-assets/swagger-ui-bundle.js").text
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', bundle)
    assert version and int(version.group(1)) >= 5  # Swagger UI 5 reads OpenAPI 3.1
    assert httpx.get(server.url + "/openapi.json").json()["openapi"].startswith("3.1")


# ----------------------------------------------------------------------------------------------
# Access log and Prometheus metrics


def test_one_access_log_line_per_request(run, caplog):
    from fastapi.testclient import TestClient

    app = create_app(run, ServeSettings(model_name="tiny", api_key=KEY))
    caplog.set_level(logging.INFO, logger="lyre.serve.access")
    auth = {"Authorization": f"Bearer {KEY}"}
    with TestClient(app) as tc:
        tc.get("/health")
        tc.post("/v1/completions", json={"model": "tiny", "prompt": "x"})  # 401
        tc.post("/v1/completions", json={"model": "tiny", "prompt": "Sing", "max_tokens": 3}, headers=auth)
        with tc.stream("POST", "/v1/completions", headers=auth,
                       json={"model": "tiny", "prompt": "Sing", "max_tokens": 3, "stream": True}) as r:
            list(r.iter_lines())
        tc.get("/nowhere")
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "lyre.serve.access"]
    expected = [('"GET /health HTTP/1.1" 200'), ('"POST /v1/completions HTTP/1.1" 401'),
                ('"POST /v1/completions HTTP/1.1" 200'), ('"POST /v1/completions HTTP/1.1" 200'),
                ('"GET /nowhere HTTP/1.1" 404')]
    assert len(lines) == len(expected), lines
    for line, part in zip(lines, expected, strict=True):
        assert part in line and re.search(r" \d+\.\d{3}s$", line), line


def _samples(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_prometheus_metrics(run):
    from fastapi.testclient import TestClient

    app = create_app(run, ServeSettings(model_name="tiny"))
    other = create_app(run, ServeSettings(model_name="tiny"))  # a second app: its own registry
    with TestClient(app) as tc, TestClient(other) as tc2:
        body = {"model": "tiny", "prompt": "Sing", "max_tokens": 4, "temperature": 0}
        for _ in range(3):
            assert tc.post("/v1/completions", json=body).status_code == 200
        with tc.stream("POST", "/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                "stream": True}) as r:
            list(r.iter_lines())
        assert tc.post("/v1/completions", json={"model": "nope", "prompt": "x"}).status_code == 404
        tc.get("/v1/models/whatever")
        r = tc.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        m = _samples(r.text)
        stats = app.state.scheduler.stats()
        theirs = _samples(tc2.get("/metrics").text)

    def requests(route, method, status):
        return m.get(("lyre_http_requests_total",
                      (("method", method), ("route", route), ("status", status))), 0)

    assert requests("/v1/completions", "POST", "200") == 3
    assert requests("/v1/completions", "POST", "404") == 1
    assert requests("/v1/chat/completions", "POST", "200") == 1
    assert requests("/v1/models/{model}", "GET", "404") == 1  # the template, not the raw path
    latency = m[("lyre_http_request_duration_seconds_count", (("method", "POST"), ("route", "/v1/completions")))]
    assert latency == 4
    assert m[("lyre_time_to_first_token_seconds_count", (("route", "/v1/completions"),))] == 3
    assert m[("lyre_time_to_first_token_seconds_count", (("route", "/v1/chat/completions"),))] == 1
    assert m[("lyre_generated_tokens_total", ())] == stats["generated_tokens"] > 0
    assert m[("lyre_prompt_tokens_total", ())] > 0
    assert m[("lyre_queue_depth", ())] == 0 and m[("lyre_active_rows", ())] == 0
    assert m[("lyre_decode_steps_total", ())] == stats["steps"]
    # The second app counted nothing of the first's traffic.
    assert ("lyre_http_requests_total", (("method", "POST"), ("route", "/v1/completions"),
                                         ("status", "200"))) not in theirs
    assert theirs[("lyre_generated_tokens_total", ())] == 0


def test_metrics_show_queue_depth_and_active_rows(run):
    app = _slow_server(run, delay=0.05, max_batch=1, max_queue=4)
    with _background_app(app) as srv:
        async def main():
            async with httpx.AsyncClient(timeout=60) as http:
                body = {"model": "tiny", "prompt": "Sing", "max_tokens": 12}
                tasks = [asyncio.create_task(http.post(srv.url + "/v1/completions", json=body))
                         for _ in range(3)]
                while httpx.get(srv.url + "/health").json()["queued"] < 1:
                    await asyncio.sleep(0.02)
                seen = _samples(httpx.get(srv.url + "/metrics").text)
                await asyncio.gather(*tasks)
                return seen

        seen = asyncio.run(main())
    assert seen[("lyre_active_rows", ())] == 1 and seen[("lyre_queue_depth", ())] >= 1


# ----------------------------------------------------------------------------------------------
# Slow clients (slowloris): headers or body that never arrive


def _raw(srv, data: bytes) -> bytes:
    """Send `data` on a fresh connection, then nothing; everything the server sends back until
    it closes the connection (the socket timeout only guards against a hang)."""
    with socket.create_connection((srv.host, srv.port), timeout=30) as s:
        if data:
            s.sendall(data)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        return received


def test_requests_that_never_arrive_get_408_and_are_closed(run):
    with start_background(run, ServeSettings(model_name="tiny", read_timeout=0.5)) as srv:
        head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n")
        answer = _raw(srv, head + b'{"model": ')  # headers, part of the body, then nothing
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"code":"request_timeout"' in answer.replace(b" ", b"")
        assert b"body did not arrive" in answer
        answer = _raw(srv, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # headers never end
        assert answer.startswith(b"HTTP/1.1 408") and b"headers did not arrive" in answer
        assert _raw(srv, b"") == b""  # a connection that sends nothing is closed, silently
        # The server is fine and a normal request still works.
        r = _post(srv, "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1})
        assert r.status_code == 200


def test_read_timeout_flag(run_dir):
    from lyre.cli import build_parser, main

    assert main(["serve", str(run_dir), "--read-timeout", "0"]) == 2
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for words in ("--read-timeout", "/metrics", "/docs", "408"):
        assert words in help_text, words


def test_docs_render_in_a_browser_with_the_network_cut_off(server, tmp_path):
    """Swagger UI really renders the schema, with every non-local request refused (and none made)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    exe = chromium_path()
    if exe is None:
        pytest.skip(NO_CHROMIUM)
    outside: list[str] = []

    def local_only(route):
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except Exception as e:  # a chromium that cannot start here
            pytest.skip(f"chromium at {exe} did not start: {str(e).splitlines()[0]}")
        try:
            page = browser.new_page()
            page.route("**/*", local_only)
            page.goto(server.url + "/docs")
            page.wait_for_selector('.swagger-ui [data-path="/v1/chat/completions"]', timeout=30_000)
            assert "lyre" in page.inner_text(".swagger-ui .info")
        finally:
            browser.close()
    assert outside == []


def test_an_unknown_character_is_reported_in_the_message_that_holds_it(trained_run):
    """A char-level model's 400 names the message and the position in its own text, not in
    the rendered conversation (issue 11, item 6)."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Sing, O goddess"},
                                          {"role": "assistant", "content": "the anger"},
                                          {"role": "user", "content": "of Ach\u2603lles"}]}
    with start_background(load_run(trained_run, device="cpu"), ServeSettings(model_name="tiny")) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert message.startswith("messages[2].content: ") and "at position 6" in message, message


def test_the_chat_page_starts_from_lyres_sampling_defaults(run):
    """The page's controls start where `lyre chat` does (lyre.core.sampling_defaults), not at values
    of its own (issue 18: its top-k was 50, the CLI's 200)."""
    from fastapi.testclient import TestClient

    from lyre.core import sampling_defaults as D

    with TestClient(create_app(run, ServeSettings(model_name="tiny"))) as tc:
        page = tc.get("/").text

    def value(name: str) -> float:
        tag = re.search(rf'<input id="{name}"[^>]*>', page).group(0)
        low, high, value = (float(re.search(rf'\b{a}="([^"]+)"', tag).group(1)) for a in ("min", "max", "value"))
        assert low <= value <= high, tag  # a range input would clamp a default outside it
        return value

    assert value("temperature") == D.DEFAULT_TEMPERATURE and value("top_k") == D.DEFAULT_TOP_K
    assert value("top_p") == D.DEFAULT_TOP_P and value("max_tokens") == D.DEFAULT_MAX_NEW_TOKENS
    assert f'<output id="top_k-value">{D.DEFAULT_TOP_K}</output>' in page and "{{" not in page
