"""Shared fixtures: a tiny corpus, a tiny model config and one tiny trained run.

Everything here is small enough to train in a second or two on one busy CPU core, and seeded,
so tests that compare two runs can demand bit-identical results. Session-scoped fixtures are
shared read-only; a test that changes a run works on `copy_run(...)` of it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import shutil
import signal
from pathlib import Path

import pytest
import torch

from lyre.run.config import BUNDLED_ILIAD, RunConfig, load_config

# A test run started in the background of a non-interactive shell (`make test &` in a script)
# inherits SIGINT ignored, and so would every `lyre` it starts: the Ctrl-C tests need Python's
# own handler, here and (inherited as the default action) in the processes they start.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# One layer, two heads of 8 dims, a context of 16 characters, batches of 4 windows.
TINY_TOML = """\
[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16
dropout = 0.0
bias = false
pos = "rope"
norm = "rmsnorm"
act = "relu2"

[data]
corpus = ["{corpus}"]
tokenizer = "char"

[train]
batch_size = 4
max_iters = 20
lr = 1e-2
min_lr = 1e-3
warmup_iters = 2
eval_interval = 10
eval_windows = 8
log_interval = 1
device = "cpu"
threads = 1  # tiny matrices gain nothing from more; on a busy machine extra threads spin
"""


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """About 12 KB of the bundled Iliad: real text, so the loss has something to learn."""
    text = BUNDLED_ILIAD.read_text(encoding="utf-8")
    start = text.index("Sing, O goddess")
    path = tmp_path_factory.mktemp("corpus") / "iliad-excerpt.txt"
    path.write_text(text[start : start + 12_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_toml(tmp_path_factory, tiny_corpus) -> Path:
    """The tiny preset as a TOML file, for the CLI."""
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(TINY_TOML.format(corpus=tiny_corpus.as_posix()), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_config(tiny_toml):
    """tiny_config("train.max_iters=12", "dropout=0.1") -> a fresh RunConfig of the tiny preset."""

    def make(*overrides: str) -> RunConfig:
        return load_config(tiny_toml, list(overrides))

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_config) -> Path:
    """A finished tiny run (20 steps, evals at 10 and 20): best/last checkpoints, metrics, plot.

    Shared by many tests: read it, never change it (use copy_run).
    """
    from lyre.train.trainer import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(), run_dir, progress=False, plot=True)
    return run_dir


@pytest.fixture
def copy_run(tmp_path):
    """copy_run(run_dir) -> a private copy of a run directory that the test may damage."""

    def copy(run_dir: Path, name: str = "run") -> Path:
        target = tmp_path / name
        shutil.copytree(run_dir, target)
        return target

    return copy


@pytest.fixture(scope="session")
def tree_digest():
    """tree_digest(root) -> {relative path: (sha256, mtime_ns)} of every file, to prove nothing
    under root was touched."""

    def digest(root: Path) -> dict[str, tuple[str, int]]:
        return {
            str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    return digest


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from a second thread; on a busy machine it only spins and waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The chat/serve tests' run (serve_util.tiny_served_run: byte-level BPE, context 256),
    trained once per session. A module that needs another run defines its own `run_dir`."""
    from serve_util import tiny_served_run

    return tiny_served_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def run(run_dir):
    """That run loaded, once per module (a module may change its tokenizer or settings)."""
    from lyre.generate.runs import load_run

    return load_run(run_dir, device="cpu")


# ----------------------------------------------------------------------------------------------
# The `slow` marker: tests that start other processes or outside programs (a Python process per
# bench, torchrun, `lyre serve`/`lyre train` in a subprocess, Chromium, PostgreSQL, a fuzzer).
# `make test-fast` (pytest -m "not slow") leaves them out for quick feedback; `make test` and CI
# run everything. Marked here, by module, fixture or what the test calls, so that a new test of
# that kind is marked without anyone remembering to.

SLOW_MODULES = {
    "test_bench_smoke",  # every bench/*.py --smoke in its own process
    "test_distributed", "test_finetune_distributed", "test_classify_distributed",  # torchrun
    "test_serve_fuzz",  # schemathesis against a live server
}
SLOW_FIXTURES = {"browser", "pg_url", "make_pg"}  # Chromium; a PostgreSQL server
SLOW_TESTS = {  # by name, with why: the longest of the rest (`pytest --durations`)
    "test_acceptance_spam_from_the_sms_data",  # fine-tunes on the whole SMS file: most of a minute
    "test_weights_and_biases_logs_offline",  # wandb starts its own service process
    # these wait on purpose (a model slowed down to fill a queue, an endpoint that times out)
    "test_full_queue_gets_429_with_retry_after", "test_metrics_show_queue_depth_and_active_rows",
    "test_requests_that_never_arrive_get_408_and_are_closed",
    "test_exact_scores_non_numbers_retries_and_failures",
    "test_an_endpoint_that_is_down_slow_or_refusing_is_one_error",
    "test_the_run_answers_in_the_assistant_role_and_stops",  # trains an SFT run until it answers
    "test_gpt2_tokenizer_imports_and_exports",  # GPT-2's 50,257-token vocabulary, in and out twice
    "test_acc_and_acc_norm_equal_lm_eval_to_the_last_example",  # runs lm-eval-harness itself
}
SPAWNS = ("subprocess.", "Popen(", "sys.executable", "torchrun", "chromium_path()")  # the last: Chromium


@functools.cache
def _spawns(f) -> bool:
    """Whether the source of `f` (without its docstring) starts a process. Cached: parametrized
    tests and shared helpers are read once, which keeps collection quick."""
    try:
        code = inspect.getsource(f).replace(f.__doc__ or "\0", "")  # what it does, not its words
    except (OSError, TypeError):
        return False
    return any(marker in code for marker in SPAWNS)


def _starts_a_process(function) -> bool:
    """Whether a test function, or a helper of its own module that it calls, starts a process."""
    module = inspect.getmodule(function)
    helpers = [getattr(module, name, None) for name in function.__code__.co_names]
    own = [h for h in helpers if inspect.isfunction(h) and inspect.getmodule(h) is module]
    return any(_spawns(f) for f in (function, *own))


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        function = getattr(item, "function", None)
        if (item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES
                or item.originalname in SLOW_TESTS
                or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
                or (function is not None and _starts_a_process(function))):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_retry_waits_in_rag_tests(request, monkeypatch):
    """The RAG tests check what an unreachable or failing endpoint does, not how long the one
    retry policy waits between tries (tests/test_openai_client.py checks that): no sleeping."""
    if request.module.__name__.startswith("test_rag_"):
        from lyre.core.openai_client import RetryPolicy

        monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt: 0.0)
