"""Load test of `lyre serve`: 1, 8 and 32 concurrent streaming clients on loopback.

    python bench/serve_load.py [--smoke] [--int8] [--threads N] [--levels 1 8 32] [--max-tokens 64]
        [--rounds 2] [--repeats 3]

The server is a real `lyre serve` subprocess on 127.0.0.1 serving a GPT-2 124M-shaped model with
random weights (fp32, or int8 with --int8; CPU) and the GPT-2 tokenizer (from /work/shared/data/gpt2 or --gpt2-dir;
without it a byte-level BPE learned from the bundled Iliad stands in, and the model's vocabulary
follows it). Every client streams /v1/completions requests one after another, `--rounds` each:
a different 32-token slice of the Iliad as the prompt, `--max-tokens` new tokens, greedy.

Reported per concurrency level: total generated tokens/s (all tokens of the level / its wall
time; the median of `--repeats` sweeps), p50 and p99 of request latency and of time to first
token (TTFT) of that run. Continuous batching is
what should make throughput grow with the number of clients: the goal is 32 clients >= 6x the
throughput of 1. Ends with one JSON line; `concurrency32_vs_1_ratio` is that ratio. --smoke: a
2-layer, 64-wide model, 1 and 4 clients, 4 new tokens, one round, one sweep (the same server
and client code in seconds; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import add_smoke_flag, json_line, machine

ROOT = Path(__file__).resolve().parent.parent
GPT2_DIR = Path("/work/shared/data/gpt2")


def build_run(run_dir: Path, gpt2_dir: Path | None, block_size: int = 1024, smoke: bool = False) -> str:
    """Write a run directory holding a GPT-2 124M-shaped random model; returns the tokenizer."""
    import torch

    from lyre.model import GPT, GPTConfig
    from lyre.run.checkpoint import save_checkpoint
    from lyre.run.config import BUNDLED_ILIAD, DataConfig, RunConfig, save_config
    from lyre.tokenizers import build_tokenizer, load_tokenizer

    if gpt2_dir is not None and (gpt2_dir / "encoder.json").is_file():
        spec = f"gpt2:{gpt2_dir}"
        tokenizer = load_tokenizer(spec)
    else:
        spec = "bpe:8192"
        tokenizer = build_tokenizer(spec, [BUNDLED_ILIAD.read_text(encoding="utf-8")])
    torch.manual_seed(0)
    small = dict(n_layer=2, n_head=2, n_embd=64) if smoke else {}  # else GPT-2 124M's shape
    config = RunConfig(model=GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, **small),
                       data=DataConfig(tokenizer=spec))
    model = GPT(config.model)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.json")
    tokenizer.save(run_dir / "tokenizer")
    save_checkpoint(run_dir, "last", model=model, optimizer=None, state={"step": 0})
    return spec


def prompts(n: int, tokens: int) -> list[str]:
    """n different prompts of about `tokens` GPT-2 tokens each (slices of the Iliad)."""
    from lyre.run.config import BUNDLED_ILIAD

    words = BUNDLED_ILIAD.read_text(encoding="utf-8").split()
    size = int(tokens * 0.75)  # ~0.75 words per token
    return [" ".join(words[5000 + i * size : 5000 + (i + 1) * size]) for i in range(n)]


async def one_request(http: httpx.AsyncClient, url: str, prompt: str, max_tokens: int,
                      temperature: float) -> dict:
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    usage = None
    async with http.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if first is None and any(c.get("text") for c in chunk["choices"]):
                first = time.perf_counter()
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start,
            "tokens": usage["completion_tokens"] if usage else 0}


async def level(url: str, clients: int, rounds: int, texts: list[str], max_tokens: int,
                temperature: float) -> dict:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        async def client(i: int) -> list[dict]:
            out = []
            for r in range(rounds):
                out.append(await one_request(http, url, texts[(i * rounds + r) % len(texts)], max_tokens,
                                             temperature))
            return out

        start = time.perf_counter()
        results = [x for xs in await asyncio.gather(*(client(i) for i in range(clients))) for x in xs]
        wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2),
        "latency_p50_s": round(percentile([r["latency"] for r in results], 50), 3),
        "latency_p99_s": round(percentile([r["latency"] for r in results], 99), 3),
        "ttft_p50_s": round(percentile([r["ttft"] for r in results], 50), 3),
        "ttft_p99_s": round(percentile([r["ttft"] for r in results], 99), 3),
    }


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lyre serve exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("lyre serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--repeats", type=int, default=3, help="sweeps over the levels; medians are reported")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--gpt2-dir", type=Path, default=GPT2_DIR)
    ap.add_argument("--run-dir", type=Path, help="serve this run instead of building a random one")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the server (0: its default)")
    ap.add_argument("--int8", action="store_true", help="serve with int8 weights (lyre serve --int8)")
    ap.add_argument("--block-size", type=int, default=1024, help="the random model's context length")
    ap.add_argument("--context-overflow", choices=("stop", "slide"), default="stop",
                    help="lyre serve --context-overflow; with slide and a small --block-size, "
                         "requests generate past the context")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.max_tokens, args.rounds, args.repeats, args.levels, args.threads = 4, 1, 1, [1, 4], 1

    with tempfile.TemporaryDirectory(prefix="lyre-serve-bench-") as tmp:
        run_dir = args.run_dir or Path(tmp) / "bench"
        spec = "given" if args.run_dir else build_run(run_dir, args.gpt2_dir, args.block_size, args.smoke)
        from lyre.serve.server import free_port

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "lyre", "serve", str(run_dir), "--port", str(port), "--model-name", "bench",
             "--max-batch", str(max(args.levels)), "--max-queue", "1024", "--log-level", "warning",
             "--device", "cpu", "--threads", str(args.threads), "--context-overflow", args.context_overflow]
            + (["--int8"] if args.int8 else []), env=env)
        try:
            wait_ready(url, proc)
            texts = prompts(max(args.levels) * args.rounds, args.prompt_tokens)
            asyncio.run(level(url, 1, 1, texts, 4, args.temperature))  # warm-up
            # The levels run in turn, `--repeats` times, so a slow spell of a shared machine hits
            # every level alike; each level reports its median run by tokens/s.
            runs: dict[str, list[dict]] = {str(c): [] for c in args.levels}
            for repeat in range(args.repeats):
                for clients in args.levels:
                    r = asyncio.run(level(url, clients, args.rounds, texts, args.max_tokens, args.temperature))
                    runs[str(clients)].append(r)
                    print(f"[{repeat + 1}/{args.repeats}] {clients:>3} clients: {r['tokens_per_s']:8.1f} "
                          f"tokens/s  latency p50 {r['latency_p50_s']:.2f} s p99 {r['latency_p99_s']:.2f} s  "
                          f"TTFT p50 {r['ttft_p50_s']:.3f} s p99 {r['ttft_p99_s']:.3f} s  ({r['requests']} "
                          f"requests, {r['tokens']} tokens, {r['wall_s']} s)", flush=True)
            results = {c: sorted(rs, key=lambda r: r["tokens_per_s"])[len(rs) // 2] for c, rs in runs.items()}
            health = httpx.get(url + "/health").json()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    weights = "int8" if args.int8 else "fp32"
    shape = "2-layer 64-wide (smoke)" if args.smoke else "gpt2-124M-shape"
    record = {"bench": "serve_load", "model": f"{shape}, random weights, {weights}, cpu",
              "tokenizer": spec, "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens,
              "rounds": args.rounds, "repeats": args.repeats, "temperature": args.temperature,
              "server_threads": args.threads, "block_size": args.block_size,
              "context_overflow": args.context_overflow,
              "levels": results,
              "server_steps": health["steps"], "machine": machine(), "smoke": args.smoke}
    base = results.get("1", {}).get("tokens_per_s")
    for clients, r in results.items():
        if clients != "1" and base:
            record[f"concurrency{clients}_vs_1_ratio"] = round(r["tokens_per_s"] / base, 2)
    json_line(record)


if __name__ == "__main__":
    main()
