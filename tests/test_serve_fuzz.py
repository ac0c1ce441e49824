"""Fuzzing the API from its own OpenAPI schema (schemathesis): no input gets a 5xx.

Schemathesis reads /openapi.json from a live server on 127.0.0.1 and sends generated requests,
valid and invalid, to every operation. Every response must be a non-5xx whose status code,
content type and body the schema documents. Examples per operation are bounded (and generated
requests ask for a few tokens at most) so the whole run stays short.
"""

from __future__ import annotations

import time

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402
from serve_util import tiny_served_run  # noqa: E402

MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from lyre.generate.runs import load_run
    from lyre.serve import ServeSettings
    from lyre.serve.server import start_background

    run = load_run(tiny_served_run(tmp_path_factory.getbasetemp()), device="cpu")
    with start_background(run, ServeSettings(model_name="tiny", max_body_bytes=64 * 1024)) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(live.url + "/openapi.json")


def _operations(api_schema) -> list:
    return [result.ok() for result in api_schema.get_all_operations()]


def _bounded(case, positive: bool) -> None:
    """Name the served model in valid requests (a random name only ever gets the 404), and keep
    generation requests short: a few tokens each."""
    body = case.body
    if positive and isinstance(body, dict):
        body["model"] = "tiny"
    if positive and case.path_parameters and "model" in case.path_parameters:
        case.path_parameters["model"] = "tiny"
    if isinstance(body, dict):
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 4:
                body[key] = 4
        if case.path == "/v1/chat/completions" and "max_tokens" not in body \
                and "max_completion_tokens" not in body:
            body["max_tokens"] = 4


CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_api_never_answers_5xx(api_schema, live, mode):
    """Every operation, valid (positive) and invalid (negative) requests: never a 5xx, and
    whatever comes back is what the schema documents."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable

    generation_mode = schemathesis.GenerationMode(mode)
    operations = _operations(api_schema)
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/models"}
    for op in operations:
        @given(case=op.as_strategy(generation_mode=generation_mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            _bounded(case, mode == "positive")
            response = case.call(base_url=live.url, timeout=60)
            assert response.status_code < 500, (case.path, case.body, response.text)
            case.validate_response(response, checks=CHECKS)

        try:
            fuzz()
        except Unsatisfiable:
            # Nothing to make invalid: an operation with no parameters and no body.
            assert mode == "negative" and op.method.upper() == "GET", op.path
    # A stream whose client stopped reading is cancelled at the worker's next step: allow it.
    deadline = time.monotonic() + 10
    while (health := live.app.state.scheduler.stats())["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health["active"] == 0 and health["queued"] == 0
