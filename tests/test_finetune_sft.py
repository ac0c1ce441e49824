"""Supervised fine-tuning end to end: `lyre finetune` on a small learnable instruction set from a
lyre-pretrained BPE model, then `lyre chat RUN` (the run's template, no flags) answers and stops
by itself; the loss mask; exact resume; early stopping; frozen blocks; Hugging Face bases."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from finetune_util import base_run, colour_records, write_json

from lyre.chat.templates import template_name_for_run
from lyre.cli import main
from lyre.finetune.command import finetune
from lyre.finetune.encode import Example
from lyre.finetune.sft import IGNORE, EpochOrder, pad_batch
from lyre.run import checkpoint as ckpt

FAST = ["lr=1e-2", "batch_size=16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_json(tmp_path_factory.mktemp("sft-data") / "colours.json", colour_records(80))


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, data):
    """A full fine-tune long enough to learn the answers and to end them (80 records, 10 test)."""
    out = tmp_path_factory.mktemp("sft") / "run"
    result = finetune(base_run(tmp_path_factory), data, out, progress=False, quiet=True,
                      overrides=[*FAST, "finetune.epochs=25", "finetune.test_fraction=0.125"])
    return out, result


def test_the_run_answers_in_the_assistant_role_and_stops(sft_run, capsys):
    out, result = sft_run
    assert result.train.step == result.prepared.config.train.max_iters >= 100
    responses = json.loads((out / "responses.json").read_text())
    assert responses["count"] == 10 and responses["template"] == "alpaca"
    # Ended by the model's own <|endoftext|>: no stop string, no length limit needed.
    assert responses["stopped"] == 10, [e["response"] for e in responses["responses"]]
    assert template_name_for_run(out) == "alpaca"  # recorded: chat and serve need no flag
    for entry in responses["responses"]:
        assert entry["response"].startswith("The") and "###" not in entry["response"]
    for entry in responses["responses"][:3]:  # the same answers through `lyre chat RUN -p`
        assert main(["chat", str(out), "-p", entry["prompt"], "--temperature", "0",
                     "--max-new-tokens", "40"]) == 0
        said = capsys.readouterr().out.strip()
        assert said == entry["response"] and "###" not in said
    assert (out / "loss.png").is_file()
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if "val_loss" in line]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] / 2


def test_batches_mask_the_prompt_and_the_padding():
    a = Example([5, 6, 7, 8, 9], [False, False, True, True, True])
    b = Example([1, 2, 3], [False, True, True])
    x, y = pad_batch([a, b], pad_id=0)
    assert x.tolist() == [[5, 6, 7, 8], [1, 2, 0, 0]]
    assert y.tolist() == [[IGNORE, 7, 8, 9], [2, 3, IGNORE, IGNORE]]
    x, y = pad_batch([a, b], pad_id=0, train_on_prompt=True)
    assert y.tolist() == [[6, 7, 8, 9], [2, 3, IGNORE, IGNORE]]


def test_epoch_order_covers_every_example_once_per_epoch():
    order = EpochOrder(7, seed=3)
    first = order.take(5) + order.take(2)
    assert sorted(first) == list(range(7)) and order.epoch == 0
    second = order.take(7)
    assert sorted(second) == list(range(7)) and second != first and order.epoch == 1
    again = EpochOrder(7, seed=3)
    again.load_state_dict({"epoch": 1, "position": 0})
    assert again.take(7) == second


@pytest.mark.parametrize("lora", [False, True])
def test_exact_resume(tmp_path_factory, tmp_path, data, lora):
    """N steps + resume + N steps == 2N steps straight: weights, optimizer, metrics."""
    base = base_run(tmp_path_factory)
    extra = {"lora_rank": 4} if lora else {}
    sets = [*FAST, "max_iters=8", "eval_interval=3", "model.dropout=0.1"]
    finetune(base, data, tmp_path / "straight", overrides=sets, progress=False, plot=False, quiet=True,
             **extra)
    finetune(base, data, tmp_path / "split", overrides=sets, progress=False, plot=False, quiet=True,
             stop_at=4, **extra)
    assert not (tmp_path / "split" / "responses.json").exists()  # only a finished run answers
    assert main(["train", "--resume", str(tmp_path / "split"), "--no-progress"]) == 0  # = finetune --resume
    a = ckpt.load_model_state(tmp_path / "straight", "last")
    b = ckpt.load_model_state(tmp_path / "split", "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if lora:
        assert all(k.endswith(("lora_A", "lora_B")) for k in a)

    def losses(run):
        return [(r["step"], r.get("loss"), r.get("val_loss"))
                for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert losses(tmp_path / "straight") == losses(tmp_path / "split")


def test_early_stop_when_the_val_loss_stops_improving(tmp_path_factory, tmp_path, data):
    result = finetune(base_run(tmp_path_factory), data, tmp_path / "run", progress=False, plot=False,
                      quiet=True, overrides=["lr=0", "min_lr=0", "max_iters=20", "eval_interval=1",
                                             "finetune.early_stop=2", "finetune.responses=false"])
    assert result.train.stopped_early and "not improved for 2 evaluations" in result.train.stopped_early
    assert result.train.step == 3
    assert ckpt.latest_checkpoint(tmp_path / "run") == "last"


def test_unfrozen_blocks_train_only_the_last_ones(tmp_path_factory, tmp_path, data):
    base = base_run(tmp_path_factory)
    finetune(base, data, tmp_path / "run", progress=False, plot=False, quiet=True,
             overrides=[*FAST, "max_iters=3", "finetune.unfrozen_blocks=1", "finetune.responses=false"])
    before = ckpt.load_model_state(base, "best")
    after = ckpt.load_model_state(tmp_path / "run", "last")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("transformer.h.0.", "transformer.ln_f.")) for k in changed)
    assert "transformer.wte.weight" not in changed


def test_a_hugging_face_directory_as_base(tmp_path_factory, tmp_path, data):
    from lyre.generate.runs import load_run
    from lyre.hf import export_hf

    hf = export_hf(base_run(tmp_path_factory), tmp_path / "hf")
    finetune(hf, data, tmp_path / "full", progress=False, plot=False, quiet=True,
             overrides=["max_iters=2", "finetune.responses=false"])
    assert not (tmp_path / "full" / "base").exists()  # full weights are in its checkpoints
    finetune(hf, data, tmp_path / "lora", lora_rank=2, progress=False, plot=False, quiet=True,
             overrides=["max_iters=2", "finetune.responses=false"])
    config = json.loads((tmp_path / "lora" / "config.json").read_text())
    assert config["finetune"]["base"] == "base" and (tmp_path / "lora" / "base" / "checkpoints").is_dir()
    assert config["finetune"]["base_source"] == str(hf)
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "lora", moved)  # the run carries its base along
    load_run(moved, "last", "cpu")
    assert not list(tmp_path.glob(".*finetune-*")), "the scratch directory is removed"


def test_train_on_prompt_changes_what_is_learned_not_what_is_scored(tmp_path_factory, tmp_path, data):
    base = base_run(tmp_path_factory)
    sets = [*FAST, "max_iters=4", "eval_interval=4", "finetune.responses=false"]
    a = finetune(base, data, tmp_path / "masked", overrides=sets, progress=False, plot=False, quiet=True)
    b = finetune(base, data, tmp_path / "unmasked", progress=False, plot=False, quiet=True,
                 overrides=[*sets, "finetune.train_on_prompt=true"])
    assert a.train.val_loss != b.train.val_loss
    train_a = json.loads((tmp_path / "masked" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    train_b = json.loads((tmp_path / "unmasked" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert train_a != train_b  # the first batch's loss covers other tokens


def test_lyre_serve_uses_the_runs_template(sft_run):
    import httpx

    from lyre.generate.runs import load_run
    from lyre.serve import ServeSettings
    from lyre.serve.server import start_background

    out, _ = sft_run
    entry = json.loads((out / "responses.json").read_text())["responses"][0]
    with start_background(load_run(out, device="cpu"), ServeSettings(model_name="sft")) as srv:
        assert httpx.get(srv.url + "/v1/models").json()["data"][0]["chat_template"] == "alpaca"
        body = {"model": "sft", "temperature": 0, "max_tokens": 40,
                "messages": [{"role": "user", "content": entry["prompt"]}]}
        choice = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
    assert choice["message"]["content"] == entry["response"] and choice["finish_reason"] == "stop"


# ---- the end of a run (19.19, fine-tuning time) ---------------------------------------------


def test_the_test_split_is_answered_on_the_runs_threads(tmp_path_factory, tmp_path, data,
                                                         monkeypatch):
    """train.threads holds for the answers after training too, not only for the loop: on a
    shared machine torch's default (a thread per core) made them 8-14x slower (docs/log.md)."""
    import lyre.finetune.command as command

    seen = []
    real = command.generate_responses

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(command, "generate_responses", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        finetune(base_run(tmp_path_factory), data, tmp_path / "run", progress=False, plot=False,
                 quiet=True, overrides=["max_iters=2", "threads=1", "finetune.response_tokens=3"])
        assert seen == [1] and torch.get_num_threads() == 2  # the caller's setting is back
    finally:
        torch.set_num_threads(before)


def test_run_threads_zero_leaves_torchs_setting():
    from lyre.finetune.command import run_threads

    before = torch.get_num_threads()
    with run_threads(0):
        assert torch.get_num_threads() == before
    with run_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_answers_decode_together_and_match_one_at_a_time(sft_run):
    """The default batch (as many rows as 1 GiB of KV cache holds, at most 64) answers exactly
    as one prompt at a time, greedily; a smaller budget means fewer rows."""
    from lyre.chat.templates import get_template
    from lyre.engine import Engine
    from lyre.finetune.responses import MAX_ROWS, answer_rows, generate_responses
    from lyre.finetune.tasks import get_task
    from lyre.generate.runs import load_run

    out, _ = sft_run
    run = load_run(out, "best", "cpu")
    records = get_task("sft").read(out / "data" / "test.jsonl")[0]
    template = get_template("alpaca")
    together = generate_responses(run, template, records, max_new_tokens=12)
    alone = generate_responses(run, template, records, max_new_tokens=12, max_batch=1)
    assert together == alone and len(together) == 10
    engine = Engine(run.model, run.tokenizer, run.device)
    per_row = engine.new_batch(1, max_length=100).reserve()
    assert answer_rows(engine, 100) == MAX_ROWS  # a tiny model: the cap, not the budget
    assert answer_rows(engine, 100, budget=3 * per_row + 1) == 3
    assert answer_rows(engine, 100, budget=1) == 1
