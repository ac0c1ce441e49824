"""Every verb on every run kind, each in a fresh process (issue 19).

Seven tiny real runs are made once by the CLI (tests/matrix_util.py): a pretrained GPT, its SFT,
LoRA and DPO fine-tunes, a classifier, an LSTM and an encoder-decoder. Then every verb runs on
every run in its own `python -m lyre` process, so nothing an earlier import set up can make a
verb work by luck. A verb either works (exit 0 and the output it promises) or refuses with exit
2 and exactly one `lyre: error:` line that says what to use instead (no traceback).

The whole matrix is the table MATRIX below: one row per run kind, one column per verb; a cell is
OK or the pattern the one error line must match.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from matrix_util import (
    FINETUNE_STEPS,
    KINDS,
    PRETRAINED,
    Result,
    build_runs,
    env,
    free_port,
    last_step,
    lyre_cmd,
    run_lyre,
)
from serve_util import wait_health

# slow: about 90 fresh processes. The timeout covers making the seven runs in the first test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

OK = "ok"
# What a refusal must say (a regex on its one line): what to use instead.
USE_SAMPLE = r"use `?lyre (sample|chat)"                 # translate on a language model
USE_CLASSIFY = r"use `?lyre classify"                    # generating verbs on a classifier
MAKE_CLASSIFIER = r"lyre finetune .*--task classify"     # classify on a run that is not one
USE_TRANSLATE = r"`?lyre translate"                      # chat / serve on an encoder-decoder
USE_TRAIN_RESUME = r"lyre train --resume"                # finetune --resume on a pretrained run
# agent on the GPT-shaped runs: their context of 256 tokens cannot hold the tool list (one
# declaration takes 600-700 tokens of their 300-token BPE); a run that can answers (tests/test_calculator*.py)
NO_ROOM = r"does not fit .*context of 256 tokens"
NO_HF_LSTM = r"(?=.*\blstm\b)(?=.*\b(gpt|GPT)\b)"        # export-hf: names the arch and what exports
NO_HF_SEQ2SEQ = r"(?=.*\bseq2seq\b)(?=.*\b(gpt|GPT)\b)"
NO_ATTENTION = r"(?=.*\blstm\b)(?=.*\bgpt\b)(?=.*\bseq2seq\b)"  # attention: which archs have it
# attention on a classifier: refused like sample/chat/eval (a choice of this table: today's
# behaviour, and issue 19 does not ask for classifier attention maps).

VERBS = ("info", "sample", "eval", "chat", "serve", "export-hf", "plot", "attention", "translate",
         "classify", "resume", "resume-other", "agent")
MATRIX = {
    #            info sample        eval          chat           serve          export-hf      plot attention     translate     classify         resume resume-other agent
    "gpt":        (OK, OK,           OK,           OK,            OK,            OK,            OK,  OK,           USE_SAMPLE,   MAKE_CLASSIFIER, OK,    USE_TRAIN_RESUME, NO_ROOM),
    "sft":        (OK, OK,           OK,           OK,            OK,            OK,            OK,  OK,           USE_SAMPLE,   MAKE_CLASSIFIER, OK,    OK, NO_ROOM),
    "lora":       (OK, OK,           OK,           OK,            OK,            OK,            OK,  OK,           USE_SAMPLE,   MAKE_CLASSIFIER, OK,    OK, NO_ROOM),
    "dpo":        (OK, OK,           OK,           OK,            OK,            OK,            OK,  OK,           USE_SAMPLE,   MAKE_CLASSIFIER, OK,    OK, NO_ROOM),
    "classifier": (OK, USE_CLASSIFY, USE_CLASSIFY, USE_CLASSIFY,  OK,            OK,            OK,  USE_CLASSIFY, USE_CLASSIFY, OK,              OK,    OK, USE_CLASSIFY),
    "lstm":       (OK, OK,           OK,           OK,            OK,            NO_HF_LSTM,    OK,  NO_ATTENTION, USE_SAMPLE,   MAKE_CLASSIFIER, OK,    USE_TRAIN_RESUME, OK),
    "seq2seq":    (OK, OK,           OK,           USE_TRANSLATE, USE_TRANSLATE, NO_HF_SEQ2SEQ, OK,  OK,           OK,           MAKE_CLASSIFIER, OK,    USE_TRAIN_RESUME, USE_TRANSLATE),
}
# resume: `lyre train --resume` for a pretrained run, `lyre finetune --resume` for a fine-tune,
# both going on two steps. resume-other: the other verb; `lyre train --resume` continues a
# fine-tune too (docs/finetune.md), `lyre finetune --resume` on a pretrained run must refuse.

PROMPTS = {"seq2seq": "3 May 1999", "classifier": "WIN! cash waiting, call 01234567890 now"}
PROMPT = "Sing, O goddess"


def prompt(kind: str) -> str:
    return PROMPTS.get(kind, PROMPT)


PAIRS = [pytest.param(kind, verb, id=f"{kind}-{verb}") for kind in KINDS for verb in VERBS]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("matrix")


@pytest.fixture(scope="module")
def runs(home) -> dict[str, Path]:
    """The seven runs, made once for the module; tests read them, a resume works on a copy.
    LYRE_MATRIX_RUNS=DIR makes them in DIR once and reuses them (to re-check fixes quickly)."""
    keep = os.environ.get("LYRE_MATRIX_RUNS")
    if keep and all((Path(keep) / "runs" / kind / "config.json").is_file() for kind in KINDS):
        return {kind: Path(keep) / "runs" / kind for kind in KINDS}
    return build_runs(Path(keep) if keep else home)


def test_the_table_covers_every_pair():
    assert set(MATRIX) == set(KINDS) and all(len(row) == len(VERBS) for row in MATRIX.values())


@pytest.mark.parametrize("kind, verb", PAIRS)
def test_verb_on_run(kind, verb, runs, home, tmp_path):
    want = MATRIX[kind][VERBS.index(verb)]
    run = runs[kind]
    if verb == "serve":
        return check_serve(kind, run, home, tmp_path, want)
    if verb in ("resume", "resume-other"):
        run = shutil.copytree(run, tmp_path / kind)  # a resume changes the run: work on a copy
    argv, check = COMMANDS[verb](kind, run, tmp_path)
    result = run_lyre(home, *argv)
    if want == OK:
        assert result.code == 0 and "Traceback" not in result.err, f"lyre {' '.join(map(str, argv))}\n{result}"
        check(result, tmp_path)
    else:
        assert_refusal(result, want, argv)


def assert_refusal(result: Result, pattern: str, argv) -> None:
    """Exit 2, and stderr is exactly one `lyre: error:` line matching pattern."""
    what = f"lyre {' '.join(map(str, argv))}\n{result}"
    lines = result.err.rstrip("\n").splitlines()
    assert result.code == 2, what
    assert "Traceback" not in result.err and len(lines) == 1, what
    assert lines[0].startswith("lyre: error: "), what
    assert re.search(pattern, lines[0]), f"the error does not match {pattern!r}\n{what}"


# ----------------------------------------------------------------------------------------------
# One command per verb, and what its output must show when it works

def info(kind, run, tmp):
    return ["info", run], lambda r, _: assert_in(r, r"param", r.out)


def sample(kind, run, tmp):
    argv = ["sample", run, "--prompt", prompt(kind), "--max-new-tokens", 8, "--seed", 0]
    return argv, lambda r, _: assert_in(r, r"\S", r.out)


def eval_(kind, run, tmp):
    return ["eval", run], lambda r, _: assert_in(r, r"loss \d+\.\d+", r.out)


def chat(kind, run, tmp):
    argv = ["chat", run, "-p", prompt(kind), "--max-new-tokens", 8, "--seed", 0, "--history", ""]
    return argv, lambda r, _: assert_in(r, r"\S", r.out)


def export_hf(kind, run, tmp):
    def check(r, tmp):
        files = {p.name for p in (tmp / "hf").iterdir()}
        assert {"config.json", "model.safetensors"} <= files, f"{sorted(files)}\n{r}"
    return ["export-hf", run, "--out", tmp / "hf"], check


def plot(kind, run, tmp):
    def check(r, tmp):
        assert (tmp / "loss.png").stat().st_size > 0, str(r)
    return ["plot", run, "--out", tmp / "loss.png"], check


def attention(kind, run, tmp):
    def check(r, tmp):
        assert (tmp / "attn.png").stat().st_size > 0, str(r)
    return ["attention", run, "--prompt", prompt(kind), "--out", tmp / "attn.png"], check


def translate(kind, run, tmp):
    return ["translate", run, "--text", prompt(kind)], lambda r, _: assert_in(r, r"\S", r.out)


def classify(kind, run, tmp):
    return ["classify", run, prompt(kind)], lambda r, _: assert_in(r, r"\b(spam|ham)\b", r.out)


def agent(kind, run, tmp):
    """The agent loop with the calculator: a tiny model may call it or answer at once; either way
    one JSON object with the answer, the steps and why it stopped."""
    def check(r, _):
        result = json.loads(r.out)
        assert {"answer", "steps", "stopped"} <= set(result), r.out
    argv = ["agent", run, "What is 2 plus 3?", "--tools", "calculator", "--max-steps", 2, "--json",
            "--replace-unknown", "--max-tokens", 16]
    return argv, check


def resume(kind, run, tmp, *, other: bool = False):
    """Go on two steps past where the run ended, with its own verb (or, other=True, the other)."""
    ended = last_step(run)
    assert ended == (10 if kind in PRETRAINED else FINETUNE_STEPS)
    pretrained = kind in PRETRAINED
    verb = "train" if pretrained != other else "finetune"

    def check(r, _):
        assert last_step(run) == ended + 2, f"the run ended at step {last_step(run)}\n{r}"
    return [verb, "--resume", run, "--set", f"max_iters={ended + 2}", "--no-progress"], check


def resume_other(kind, run, tmp):
    return resume(kind, run, tmp, other=True)


COMMANDS = {"info": info, "sample": sample, "eval": eval_, "chat": chat, "export-hf": export_hf,
            "plot": plot, "attention": attention, "translate": translate, "classify": classify,
            "resume": resume, "resume-other": resume_other, "agent": agent}


def assert_in(result: Result, pattern: str, text: str) -> None:
    assert re.search(pattern, text), f"no {pattern!r} in the output\n{result}"


# ----------------------------------------------------------------------------------------------
# serve: start the server, wait for /health, one request of the kind's own API, SIGTERM

def check_serve(kind: str, run: Path, home: Path, tmp: Path, want: str) -> None:
    port = free_port()
    argv = ["serve", run, "--port", port, "--threads", 1, "--log-level", "warning"]
    out, err = tmp / "serve.out", tmp / "serve.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(lyre_cmd(*argv), env=env(home), cwd=home, stdout=stdout,
                                stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        try:
            wait_health(f"http://127.0.0.1:{port}", timeout=120, proc=proc)
            started = True
        except RuntimeError:  # it exited while starting
            started = False
        result = lambda: Result(proc.poll() if proc.poll() is not None else -1,  # noqa: E731
                                out.read_text(), err.read_text())
        if want != OK:
            assert not started, f"the server started instead of refusing\n{result()}"
            assert_refusal(result(), want, argv)
            return
        assert started, f"lyre {' '.join(map(str, argv))}\n{result()}"
        answer = one_request(kind, f"http://127.0.0.1:{port}", model=run.name)
        assert answer, f"empty answer\n{result()}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def one_request(kind: str, url: str, model: str) -> object:
    """The request a user of this kind of run sends first; returns what it answered. `model` is
    required by the OpenAI API (the server's default name for it is the run directory's)."""
    if kind == "classifier":
        r = httpx.post(f"{url}/v1/classify", json={"input": prompt(kind), "model": model}, timeout=60)
        assert r.status_code == 200, r.text
        label = r.json()["data"][0]["label"]
        assert label in ("spam", "ham"), r.text
        return label
    if kind in ("sft", "lora", "dpo"):  # a chat model: its template, through chat completions
        body = {"model": model, "messages": [{"role": "user", "content": prompt(kind)}], "max_tokens": 4}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert isinstance(choice["message"]["content"], str), json.dumps(choice)
        return choice["finish_reason"]
    r = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": prompt(kind), "max_tokens": 4}, timeout=60)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert isinstance(choice["text"], str), json.dumps(choice)
    return choice["finish_reason"]
