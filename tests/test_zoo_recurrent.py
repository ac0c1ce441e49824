"""Recurrent language models (arch rnn, lstm, gru): they train, resume exactly, evaluate and
generate through the same code as the GPT, and their generation state matches a full forward."""

from __future__ import annotations

import json

import pytest
import torch
from cli_util import assert_one_line_error, records, run_cli

from lyre.core.errors import LyreError
from lyre.model import build_model
from lyre.model.recurrent import LSTMConfig, RecurrentLM
from lyre.run import checkpoint as ckpt
from lyre.run.config import load_config
from lyre.train.trainer import train

ARCHS = ["rnn", "lstm", "gru"]
SHORT = ("train.max_iters=8", "train.eval_interval=4")


def recurrent(arch: str, *more: str) -> tuple[str, ...]:
    """Overrides that turn the tiny GPT preset of conftest.py into a tiny recurrent model."""
    return (f"arch={arch}", "n_hidden=16", "n_embd=16", *more)


@pytest.fixture(scope="module")
def recurrent_runs(tmp_path_factory, tiny_config):
    """arch -> a finished tiny run of 8 steps (module-scoped: read, never change)."""
    runs = {}
    for arch in ARCHS:
        run_dir = tmp_path_factory.mktemp("recurrent") / arch
        train(tiny_config(*recurrent(arch, *SHORT)), run_dir, progress=False, plot=False)
        runs[arch] = run_dir
    return runs


# ----------------------------------------------------------------------------------------------
# The model


@pytest.mark.parametrize("arch", ARCHS)
def test_the_state_cache_gives_the_full_forwards_logits(arch):
    """Right-padded prefill of rows of different lengths, then decode steps, from the state
    alone, match the logits of one forward over the whole sequence."""
    torch.manual_seed(0)
    config = load_config(None, recurrent(arch, "vocab_size=11", "block_size=8", "n_layer=2")).model
    model = build_model(config).eval()
    assert isinstance(model, RecurrentLM)
    idx = torch.randint(0, 11, (3, 12))  # longer than block_size: a recurrent model goes on
    full, _ = model(idx)
    state = model.new_cache(3)
    lengths = [5, 3, 4]
    prefill, _ = model(idx[:, :5], cache=state.prefill_view([0, 1, 2], torch.tensor(lengths) - 1))
    for row, n in enumerate(lengths):
        torch.testing.assert_close(prefill[row, 0], full[row, n - 1])
    for step in range(3):
        ids = torch.stack([idx[row, n + step] for row, n in enumerate(lengths)]).unsqueeze(1)
        logits, _ = model(ids, cache=state.decode_view([n + step for n in lengths]))
        for row, n in enumerate(lengths):
            torch.testing.assert_close(logits[row, 0], full[row, n + step])


def test_copy_row_duplicates_the_state():
    model = build_model(LSTMConfig(vocab_size=7, n_embd=8, n_hidden=8, n_layer=1)).eval()
    state = model.new_cache(2)
    model(torch.tensor([[1, 2, 3]]), cache=state.prefill_view([0]))
    state.copy_row(0, 1)
    assert torch.equal(state.h[:, 0], state.h[:, 1]) and torch.equal(state.c[:, 0], state.c[:, 1])
    assert state.nbytes() == 2 * 2 * 8 * 4  # h and c, two rows of 8 floats


def test_tied_head_shares_the_embedding():
    model = build_model(LSTMConfig(vocab_size=7, n_embd=8, n_hidden=8, tie_embeddings=True))
    assert model.lm_head.weight is model.wte.weight
    with pytest.raises(LyreError, match="n_hidden == n_embd"):
        LSTMConfig(n_embd=8, n_hidden=16, tie_embeddings=True)


def test_lstm_forget_gate_starts_open():
    model = build_model(LSTMConfig(vocab_size=7, n_embd=8, n_hidden=4, n_layer=1))
    assert torch.equal(model.rnn.bias_ih_l0[4:8], torch.ones(4))


# ----------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("arch", ARCHS)
def test_each_family_trains_and_learns(recurrent_runs, arch):
    run_dir = recurrent_runs[arch]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["arch"] == arch and config["model"]["n_hidden"] == 16
    losses = [r["loss"] for r in records(run_dir) if "loss" in r]
    assert losses[-1] < losses[0]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best", "last"]


@pytest.mark.parametrize("arch,dropout", [("lstm", 0.0), ("gru", 0.2), ("rnn", 0.0)])
def test_n_steps_resume_n_steps_equals_2n_straight(tmp_path, tiny_config, arch, dropout):
    overrides = recurrent(arch, *SHORT, f"dropout={dropout}", "n_layer=2")
    straight = tmp_path / "straight"
    train(tiny_config(*overrides), straight, progress=False, plot=False)
    split = tmp_path / "split"
    train(tiny_config(*overrides), split, stop_at=3, progress=False, plot=False)
    assert train(None, split, resume=True, progress=False, plot=False).step == 8
    assert records(split) == records(straight)
    a, b = ckpt.load_model_state(split, "last"), ckpt.load_model_state(straight, "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_trains_and_evaluates_a_recurrent_run(capsys, tmp_path, tiny_toml):
    run_dir = tmp_path / "gru"
    code, out, err = run_cli(capsys, "train", "--config", tiny_toml, "--out", run_dir, "--no-progress",
                             *[f"--set={o}" for o in recurrent("gru", *SHORT)])
    assert code == 0, err
    assert "done: step 8" in out
    code, out, err = run_cli(capsys, "eval", run_dir, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["tokens"] > 0 and 0 < result["loss"] < 10


def test_info_counts_a_recurrent_model(capsys, tiny_toml):
    code, out, _ = run_cli(capsys, "info", tiny_toml, "--set", "arch=lstm", "--set", "n_hidden=16",
                           "--set", "n_embd=16", "--set", "vocab_size=10")
    assert code == 0
    # embedding 10x16 + LSTM 4*(16*16 + 16*16 + 2*16) + head 16*10 + 10
    assert f"{160 + 4 * (256 + 256 + 32) + 170:,}" in out


def test_unknown_arch_lists_the_known_ones(capsys, tiny_toml, tmp_path):
    code, _, err = run_cli(capsys, "train", "--config", tiny_toml, "--out", tmp_path / "x",
                           "--set", "arch=lstn")
    assert_one_line_error(code, err, r"unknown model.arch 'lstm?n'.*did you mean 'lstm'.*gru.*lstm.*rnn")


# ----------------------------------------------------------------------------------------------
# Generation: the engine carries the state


def test_the_engine_steps_the_state_and_runs_past_the_window():
    """After one prefill every forward pass feeds one token per row, and greedy tokens equal a
    full forward over the whole (longer than block_size) sequence at every step."""
    from lyre.engine import Engine, SamplingConfig

    torch.manual_seed(0)
    model = build_model(LSTMConfig(vocab_size=11, block_size=8, n_layer=2, n_embd=8, n_hidden=8))
    forward, shapes = model.forward, []

    def recording(idx, targets=None, cache=None):
        shapes.append(tuple(idx.shape))
        return forward(idx, targets, cache)

    model.forward = recording
    outs = Engine(model).generate([[1, 2, 3], [4, 5]], SamplingConfig(max_new_tokens=20, temperature=0,
                                                                      num_samples=2))
    assert shapes[0] == (2, 3) and set(shapes[1:]) == {(4, 1)}  # one prefill, then single steps
    assert [len(o.tokens) for o in outs] == [20] * 4 and outs[0].tokens == outs[1].tokens
    for prompt, out in (([1, 2, 3], outs[0]), ([4, 5], outs[2])):
        seq = list(prompt)
        for _ in range(20):  # the reference: recompute everything, no window
            seq.append(int(forward(torch.tensor([seq]))[0][0, -1].argmax()))
        assert out.tokens == seq[len(prompt):]


@pytest.mark.parametrize("weights", [[], ["--fp16"], ["--int8"]], ids=["fp32", "fp16", "int8"])
def test_cli_samples_past_the_training_window(capsys, recurrent_runs, weights):
    run_dir = recurrent_runs["lstm"]
    code, out, err = run_cli(capsys, "sample", run_dir, "--prompt", "Sing", "--max-new-tokens", "40",
                             "--seed", "1", "--device", "cpu", *weights)
    assert code == 0, err
    assert out.startswith("Sing") and len(out.rstrip("\n")) == 4 + 40  # block_size is 16
    assert "[notice]" not in err


def test_cli_several_samples_and_chat(capsys, recurrent_runs):
    run_dir = recurrent_runs["gru"]
    code, out, err = run_cli(capsys, "sample", run_dir, "--prompt", "Sing", "--max-new-tokens", "10",
                             "--num-samples", "3", "--seed", "2")
    assert code == 0, err
    assert out.count("--- sample") == 3
    code, out, err = run_cli(capsys, "chat", run_dir, "-p", "Sing", "--max-new-tokens", "8", "--seed", "1",
                             "--history", "")
    assert code == 0 and out.strip(), err


def test_serve_completes_with_a_recurrent_run(recurrent_runs):
    from fastapi.testclient import TestClient

    from lyre.generate.runs import load_run
    from lyre.serve import ServeSettings, create_app

    app = create_app(load_run(recurrent_runs["rnn"], device="cpu"), ServeSettings(model_name="rnn"))
    with TestClient(app) as client:
        body = {"model": "rnn", "prompt": ["Sing", "the"], "max_tokens": 6, "seed": 3, "n": 2}
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        choices = r.json()["choices"]
        assert len(choices) == 4 and all(len(c["text"]) == 6 for c in choices)
