"""Helpers shared by the chat and server tests: one tiny trained run per test session.

The run is trained once (the first test module that asks for it) into the session's base
temporary directory and reused by the others: a byte-level BPE tokenizer (so any Unicode text
can be sent, and <|endoftext|> exists), a context of 256 tokens, ten training steps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from lyre.run.config import BUNDLED_ILIAD, load_config

TOML = """\
[model]
n_layer = 1
n_head = 2
n_embd = 32
block_size = {block_size}
dropout = 0.0

[data]
corpus = ["{corpus}"]
tokenizer = "bpe:300"

[train]
batch_size = 2
max_iters = 6
warmup_iters = 2
eval_interval = 6
eval_windows = 2
log_interval = 5
final_eval = false
device = "cpu"
seed = 7
"""


def tiny_served_run(base: Path, block_size: int = 256) -> Path:
    """The path of the shared tiny run under `base`, training it on first use (another
    `block_size`, e.g. room for a tool list in the prompt: another run)."""
    from lyre.train.trainer import train

    root = base / ("lyre-serve-run" if block_size == 256 else f"lyre-serve-run-{block_size}")
    run_dir = root / "tiny-chat"
    if (run_dir / "checkpoints").is_dir():
        return run_dir
    root.mkdir(parents=True, exist_ok=True)
    text = BUNDLED_ILIAD.read_text(encoding="utf-8")
    start = text.index("Sing, O goddess")
    corpus = root / "corpus.txt"
    size = 8000 if block_size == 256 else block_size * 24  # the val split must hold a window
    corpus.write_text(text[start : start + size] + "\nhéllo wörld ✓ 🎵 ", encoding="utf-8")
    toml = root / "tiny.toml"
    toml.write_text(TOML.format(corpus=corpus.as_posix(), block_size=block_size), encoding="utf-8")
    train(load_config(toml), run_dir, progress=False, plot=False)
    return run_dir


def with_template(run_dir: Path, target: Path, template: str) -> Path:
    """A copy of run_dir (symlinked files) whose chat.json names `template`."""
    target.mkdir(parents=True, exist_ok=True)
    for item in run_dir.iterdir():
        link = target / item.name
        if not link.exists():
            link.symlink_to(item.resolve(), target_is_directory=item.is_dir())
    (target / "chat.json").write_text(json.dumps({"chat_template": template}), encoding="utf-8")
    return target


def wait_health(url: str, timeout: float = 60.0, proc=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} while starting")
        try:
            r = httpx.get(url + "/health", timeout=2.0)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become healthy within {timeout} s")
        time.sleep(0.1)


def sse_events(lines) -> list:
    """Parse `data:` lines of a server-sent event stream into JSON objects and "[DONE]"."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# The browser tests (test_web.py, test_page_rag.py, the /docs test of test_serve.py) skip with
# this reason when there is no chromium: it must say how to get one.
NO_CHROMIUM = ("chromium is not installed: `make browser` installs it (apt-get install chromium; "
               ".ci/run does it too), or set LYRE_CHROMIUM to a chromium binary")


def chromium_path() -> str | None:
    """The chromium the browser tests drive: $LYRE_CHROMIUM, else Debian's, else one on PATH."""
    import os
    import shutil

    for candidate in (os.environ.get("LYRE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None
