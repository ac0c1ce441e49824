"""Agent step overhead: lyre's loop (lyre.agent.Agent) against LangChain's create_agent, both
driving the same model over the same OpenAI-compatible API, on the same questions, in one run.

Each loop is the same two model calls: one that calls the tool `add` (tool_choice "required"),
the tool run, one that answers (tool_choice "none"), so both sides do the same work whatever
the model prefers; lyre sets the choices with Agent(tool_choice=("required", "none")),
LangChain with a wrap_model_call middleware (strict schemas, as OpenAI's strict mode). Both
declare the same JSON schema, so the prompts are the same tokens and a greedy model writes the
same calls and answers (checked: `same_answers`).

Two servers:
  lyre serve   a tiny lyre run (byte-level BPE, 2 layers) served by `lyre serve` in its own
               process: the wall time of a whole loop as a user sees it (model time included)
               -> agent_overhead_ratio = LangChain's time / lyre's (higher is better for lyre)
  scripted     an instant OpenAI-compatible endpoint (canned replies, no model): what is left
               is the frameworks' own cost per loop -> client_overhead_ratio, same direction
Sides alternate question by question; medians over the repeats (the machine is shared).

    PYTHONPATH=$PWD python bench/agent.py [--questions 8] [--repeat 5] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import add_smoke_flag, json_line, machine, median  # noqa: E402

TOML = """\
[model]
n_layer = 2
n_head = 2
n_embd = 64
block_size = 2048
dropout = 0.0

[data]
corpus = ["{corpus}"]
tokenizer = "bpe:300"

[train]
batch_size = 2
max_iters = {iters}
warmup_iters = 2
eval_interval = {iters}
eval_windows = 2
log_interval = 50
final_eval = false
device = "cpu"
seed = 7
"""
PARAMETERS = {"type": "object",
              "properties": {"a": {"enum": [1, 2, 3], "type": "integer"},
                             "b": {"enum": [1, 2, 3], "type": "integer"}},
              "required": ["a", "b"], "additionalProperties": False}
DESCRIPTION = "Add two small numbers."


def add(a: int, b: int) -> int:
    return a + b


# ----------------------------------------------------------------------------------------------
# the two sides


def lyre_agent(url: str, model: str, max_tokens: int):
    from lyre.agent import Agent, OpenAIChat
    from lyre.agent.tools import Tool

    llm = OpenAIChat(url, model, max_tokens=max_tokens, temperature=0.0, seed=None)
    tool = Tool("add", DESCRIPTION, PARAMETERS, add)
    agent = Agent(llm, [tool], max_steps=2, tool_choice=("required", "none"))
    return lambda q: agent.run(q).answer


def langchain_agent(url: str, model: str, max_tokens: int):
    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import StructuredTool
    from langchain_openai import ChatOpenAI

    tool = StructuredTool.from_function(add, name="add", description=DESCRIPTION,
                                        args_schema=PARAMETERS)

    @wrap_model_call
    def call_then_answer(request, handler):
        answered = any(isinstance(m, ToolMessage) for m in request.messages)
        return handler(request.override(tool_choice="none" if answered else "required",
                                        model_settings={"strict": True}))

    chat = ChatOpenAI(base_url=url + "/v1", api_key="unused", model=model, temperature=0,
                      max_tokens=max_tokens, max_retries=0, timeout=300)
    agent = create_agent(chat, tools=[tool], middleware=[call_then_answer])

    def run(q: str) -> str:
        out = agent.invoke({"messages": [{"role": "user", "content": q}]})
        return out["messages"][-1].content or ""

    return run


def compare(url: str, model: str, questions: list[str], repeat: int, max_tokens: int) -> dict:
    ours, theirs = lyre_agent(url, model, max_tokens), langchain_agent(url, model, max_tokens)
    ours(questions[0]), theirs(questions[0])  # warm: connections, imports, compiled grammars
    times: dict[str, list[float]] = {"lyre": [], "langchain": []}
    same = total = 0
    for r in range(repeat):
        for i, q in enumerate(questions):
            order = [("lyre", ours), ("langchain", theirs)]
            if (r + i) % 2:
                order.reverse()
            answers = {}
            for name, fn in order:
                start = time.perf_counter()
                answers[name] = fn(q)
                times[name].append(time.perf_counter() - start)
            same += answers["lyre"].strip() == answers["langchain"].strip()
            total += 1
    lyre_ms, lc_ms = median(times["lyre"]) * 1000, median(times["langchain"]) * 1000
    return {"lyre_ms_per_loop": round(lyre_ms, 2), "langchain_ms_per_loop": round(lc_ms, 2),
            "ratio": round(lc_ms / lyre_ms, 3), "same_answers": f"{same}/{total}"}


# ----------------------------------------------------------------------------------------------
# the servers


def train_tiny(root: Path, iters: int) -> Path:
    from lyre.run.config import BUNDLED_ILIAD, load_config
    from lyre.train.trainer import train

    text = BUNDLED_ILIAD.read_text(encoding="utf-8")
    corpus = root / "corpus.txt"
    corpus.write_text(text[text.index("Sing, O goddess"):][:60_000], encoding="utf-8")
    toml = root / "tiny.toml"
    toml.write_text(TOML.format(corpus=corpus.as_posix(), iters=iters), encoding="utf-8")
    train(load_config(toml), root / "run", progress=False, plot=False)
    return root / "run"


def start_lyre_serve(run_dir: Path) -> tuple[subprocess.Popen, str]:
    from lyre.serve.server import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "lyre", "serve", str(run_dir), "--port", str(port),
                             "--model-name", "tiny", "--threads", "1", "--device", "cpu",
                             "--log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"lyre serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("lyre serve did not start within 120 s")


class _Scripted(BaseHTTPRequestHandler):
    """Canned replies: a call of add(1, 2) until a tool result is in, then the answer "3";
    streamed (SSE) or not, as the request asks."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small writes must not wait for delayed ACKs (40 ms each)

    def do_GET(self) -> None:  # noqa: N802
        self._send(200, "application/json", json.dumps({"object": "list", "data": [{"id": "scripted"}]}))

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        answered = any(m.get("role") == "tool" for m in body["messages"])
        call = {"id": "call_1", "type": "function",
                "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
        message = {"role": "assistant", "content": "3"} if answered else \
            {"role": "assistant", "content": None, "tool_calls": [call]}
        finish = "stop" if answered else "tool_calls"
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            self._send(200, "application/json", json.dumps({
                "id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}))
            return
        delta = {"content": "3"} if answered else {"tool_calls": [{"index": 0, **call}]}
        chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", **delta}, "finish_reason": None}]},
                  {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}]
        self._send(200, "text/event-stream",
                   "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n")

    def _send(self, status: int, kind: str, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=96,
                   help="per model call (default 96: room for a whole call of `add`)")
    add_smoke_flag(p)
    args = p.parse_args()
    if args.smoke:
        args.questions, args.repeat = 2, 1
    import torch

    torch.set_num_threads(1)
    questions = [f"What is {1 + i % 3} plus {1 + (i // 3) % 3}?" for i in range(args.questions)]
    print(f"machine: {machine()}", file=sys.stderr)

    scripted = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=scripted.serve_forever, daemon=True).start()
    try:
        client = compare(f"http://127.0.0.1:{scripted.server_port}", "scripted", questions,
                         args.repeat * 4, args.max_tokens)
    finally:
        scripted.shutdown()
    print(f"scripted endpoint: {client}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="lyre-bench-agent-") as tmp:
        run_dir = train_tiny(Path(tmp), 4 if args.smoke else 60)
        proc, url = start_lyre_serve(run_dir)
        try:
            served = compare(url, "tiny", questions, args.repeat, args.max_tokens)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"lyre serve (tiny run): {served}", file=sys.stderr)

    json_line({
        "bench": "agent", "smoke": args.smoke, "questions": args.questions, "repeat": args.repeat,
        "max_tokens": args.max_tokens,
        "lyre_ms_per_loop": served["lyre_ms_per_loop"],
        "langchain_ms_per_loop": served["langchain_ms_per_loop"],
        "agent_overhead_ratio": served["ratio"], "same_answers": served["same_answers"],
        "scripted_lyre_ms_per_loop": client["lyre_ms_per_loop"],
        "scripted_langchain_ms_per_loop": client["langchain_ms_per_loop"],
        "client_overhead_ratio": client["ratio"],
    })


if __name__ == "__main__":
    main()
