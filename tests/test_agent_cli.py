"""`lyre agent` in a fresh process: against a scripted OpenAI-compatible server (the answer,
the call visible in --trace, --json) and a tiny run in process; and its bad input (unknown
tools, a missing index or database, an endpoint that is down): one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from agent_util import ScriptedEndpoint, call

QUESTION = "What is 48,213 times 371?"


def lyre(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lyre", "agent", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    import re

    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lyre: error: "), proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


class _Handler(BaseHTTPRequestHandler):
    endpoint: ScriptedEndpoint

    def _answer(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        reply = self.endpoint.handle(httpx.Request(method, f"http://x{self.path}", content=body))
        self.send_response(reply.status_code)
        for key in ("content-type",):
            self.send_header(key, reply.headers.get(key, "application/json"))
        self.send_header("content-length", str(len(reply.content)))
        self.end_headers()
        self.wfile.write(reply.content)

    def do_GET(self) -> None:  # noqa: N802
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted():
    """A scripted OpenAI-compatible server on a local port: (url, endpoint)."""
    endpoint = ScriptedEndpoint([
        {"calls": [call("calculator", {"expression": "48213 * 371"}, "call_1")]},
        {"content": "48,213 times 371 is 17887023."},
    ], model="calc")
    handler = type("Handler", (_Handler,), {"endpoint": endpoint})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", endpoint
    server.shutdown()


def test_agent_prints_the_answer_and_traces_the_call(scripted, tmp_path):
    url, endpoint = scripted
    trace = tmp_path / "trace.jsonl"
    proc = lyre("--llm-url", url, "--llm-model", "calc", QUESTION, "--tools", "calculator",
                "--trace", trace)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "48,213 times 371 is 17887023.\n"
    assert proc.stderr.splitlines() == ['[call] calculator({"expression": "48213 * 371"})',
                                        "[result] 17887023"]
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    starts = [e for e in events if e["event"] == "tool_start"]
    ends = [e for e in events if e["event"] == "tool_end"]
    assert [(e["name"], e["arguments"]) for e in starts] == [("calculator", '{"expression": "48213 * 371"}')]
    assert [e["output"] for e in ends] == ["17887023"]
    assert endpoint.bodies[1]["messages"][2] == {"role": "tool", "tool_call_id": "call_1",
                                                 "content": "17887023"}


def test_agent_json(scripted):
    url, _ = scripted
    proc = lyre("--llm-url", url, "--llm-model", "calc", QUESTION, "--tools", "calculator", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["answer"] == "48,213 times 371 is 17887023." and out["stopped"] == "answer"
    assert out["steps"] == [{"name": "calculator", "arguments": {"expression": "48213 * 371"},
                             "result": "17887023", "error": False, "call_id": "call_1", "turn": 1,
                             "elapsed_s": out["steps"][0]["elapsed_s"]}]
    assert out["model_calls"] == 2 and out["tool_errors"] == 0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from serve_util import tiny_served_run

    return tiny_served_run(tmp_path_factory.getbasetemp(), block_size=2048)


def test_agent_in_process_with_a_tiny_run(run_dir, tmp_path):
    """A random model forced to call (tool_choice required) until the step limit: every call
    valid, the limit said in a notice, the trace complete."""
    trace = tmp_path / "t.jsonl"
    # RUN, options, then the question: the issue's own order (positionals after options)
    proc = lyre(run_dir, "--tools", "calculator", "--tool-choice", "required", "--max-steps", "2",
                "--max-tokens", "200", "--json", "--trace", trace, "--device", "cpu",
                "What is 2 times 3?")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model_calls"] <= 2 and out["stopped"] in ("max_steps", "length")
    assert all(s["name"] == "calculator" and "expression" in s["arguments"] for s in out["steps"])
    kinds = {json.loads(line)["event"] for line in trace.read_text().splitlines()}
    assert {"chain_start", "llm_start", "llm_end", "chain_end"} <= kinds


def test_agent_bad_input_is_one_line_and_exit_2(tmp_path, run_dir):
    from lyre.serve.server import free_port

    assert_one_line_error(lyre(run_dir, "q", "--tools", "calculater"),
                          r"unknown tool 'calculater' \(did you mean calculator\?\)")
    assert_one_line_error(lyre(run_dir, "q", "--tools", f"search:{tmp_path / 'nope'}"),
                          "search: no index")
    assert_one_line_error(lyre(run_dir, "q", "--tools", f"sql:{tmp_path / 'nope.sqlite'}"),
                          "sql: no database file")
    assert_one_line_error(lyre("q", "--llm-url", f"http://127.0.0.1:{free_port()}", "--llm-model", "m"),
                          "cannot reach the LLM endpoint")
    assert_one_line_error(lyre("q"), "give a run directory, or --llm-url")
    assert_one_line_error(lyre(run_dir, "q", "--llm-url", "http://x", "--llm-model", "m"), "not both")
    assert_one_line_error(lyre(run_dir, "q", "--max-steps", "0"), "--max-steps must be at least 1")
    assert_one_line_error(lyre(run_dir, "q", "--tools", "calculator", "--tool-choice", "rm"),
                          "tool_choice must be")
    assert not (tmp_path / "nope.sqlite").exists()
