"""`lyre eval`: loss, perplexity and bits per byte, checked against a brute-force computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lyre.cli import main
from lyre.core.errors import LyreError
from lyre.eval.loss import evaluate_run, evaluate_text, evaluate_tokens
from lyre.generate.runs import load_run
from lyre.model import GPT, GPTConfig
from lyre.tokenizers.char import CharTokenizer


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, tiny_corpus):
    """Text the char run can encode (its own corpus), short enough for brute force."""
    path = tmp_path_factory.mktemp("eval") / "heldout.txt"
    path.write_text(tiny_corpus.read_text(encoding="utf-8")[5000:5600], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, tiny_config):
    """A tiny run with a byte-level BPE tokenizer, to compare with the char run."""
    from lyre.train.trainer import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny-bpe"
    train(tiny_config("data.tokenizer=bpe:300", "train.max_iters=10"), run_dir, progress=False, plot=False)
    return run_dir


def brute_force_nats(model, tokens: list[int], stride: int) -> list[float]:
    """-log p of every token but the first, each from its own forward pass over its context."""
    block, n = model.config.block_size, len(tokens)
    last = n - 1 - min(block, n - 1)  # start of the final window, aligned to the end
    nats = []
    for t in range(1, n):
        if stride == 1:
            start = max(0, t - block)  # the most context a token can have
        else:  # stride == block: non-overlapping windows, the tail in the end-aligned one
            start = ((t - 1) // block) * block
            start = start if start + block <= n - 1 else last
            start = min(start, t - 1)
        logits, _ = model(torch.tensor([tokens[start:t]]))
        nats.append(-F.log_softmax(logits[0, -1].double(), dim=-1)[tokens[t]].item())
    return nats


@pytest.mark.parametrize("stride", [1, None])
def test_numbers_match_brute_force(trained_run, heldout, stride):
    run = load_run(trained_run, device="cpu")
    text = heldout.read_text(encoding="utf-8")
    tokens = run.tokenizer.encode(text)
    block = run.config.model.block_size
    result = evaluate_text(run.model, run.tokenizer, text, stride=stride, batch_size=5)
    nats = brute_force_nats(run.model, tokens, stride or block)
    assert result.tokens == len(tokens) - 1 == len(nats)
    assert result.loss == pytest.approx(sum(nats) / len(nats), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss), rel=1e-9)
    assert result.bytes == len(text.encode("utf-8")) - 1  # ASCII chars, all but the first scored
    assert result.bits_per_byte == pytest.approx(sum(nats) / math.log(2) / result.bytes, rel=1e-5)
    assert result.stride == (stride or block) and result.block_size == block


def test_more_context_gives_a_lower_loss(trained_run, heldout):
    run = load_run(trained_run, device="cpu")
    text = heldout.read_text(encoding="utf-8")
    overlapping = evaluate_text(run.model, run.tokenizer, text, stride=4)
    separate = evaluate_text(run.model, run.tokenizer, text)
    assert overlapping.tokens == separate.tokens
    assert overlapping.loss < separate.loss


def test_bits_per_byte_counts_the_bytes_of_bpe_tokens(bpe_run, trained_run, heldout):
    bpe = evaluate_run(bpe_run, heldout, device="cpu")
    char = evaluate_run(trained_run, heldout, device="cpu")
    run = load_run(bpe_run, device="cpu")
    text = heldout.read_text(encoding="utf-8")
    first = run.tokenizer.encode(text)[0]
    assert bpe.bytes == len(text.encode("utf-8")) - len(run.tokenizer.token_bytes(first))
    assert bpe.tokens < char.tokens  # BPE tokens hold several characters ...
    assert abs(bpe.bytes - char.bytes) <= 8  # ... but score (almost) the same bytes
    assert bpe.bits_per_byte == pytest.approx(bpe.loss * bpe.tokens / math.log(2) / bpe.bytes)


def test_multibyte_text_and_an_untrained_model():
    text = "αβγ δεζ ηθι " * 20
    tok = CharTokenizer(text)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=tok.vocab_size))
    result = evaluate_tokens(model, tok, np.array(tok.encode(text)))
    assert result.bytes == len(text[1:].encode("utf-8"))  # two bytes per Greek letter
    assert result.loss == pytest.approx(math.log(tok.vocab_size), abs=0.3)  # ~uniform at init
    with pytest.raises(LyreError, match="batch_size"):
        evaluate_tokens(model, tok, np.array(tok.encode(text)), batch_size=0)


def test_cli_eval_json_matches_the_python_api(trained_run, heldout, capsys):
    assert main(["eval", str(trained_run), "--data", str(heldout), "--stride", "8", "--json",
                 "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = evaluate_run(trained_run, heldout, stride=8, device="cpu")
    for key, value in expected.to_dict().items():
        assert report[key] == pytest.approx(value)
    assert report["tokenizer"] == "char" and report["checkpoint"] in ("best", "last")
    assert main(["eval", str(trained_run), "--data", str(heldout), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "bits/byte" in out and "perplexity" in out and "stride 16" in out


@pytest.mark.parametrize(
    "content,flags,message",
    [
        (None, [], "not found"),
        ("", [], "empty"),
        (b"\xff\xfe bad", [], "not UTF-8"),
        ("Sing, O goddess", ["--stride", "0"], "stride"),
        ("Sing, O goddess", ["--stride", "17"], "stride"),
        ("Sing \u2603", [], "is not in this char-level model"),
    ],
)
def test_cli_eval_errors_are_one_line(trained_run, tmp_path, capsys, content, flags, message):
    path = tmp_path / "data.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    assert main(["eval", str(trained_run), "--data", str(path), "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lyre: error:") and message in err and err.count("\n") == 1


# ---- `lyre eval` by the kind of run (issue 19.2) ---------------------------------------------


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A tiny fine-tuned (SFT) run: its splits in RUN/data/*.jsonl, its template in config.json."""
    from finetune_util import base_run, colour_records, write_json

    from lyre.finetune.command import finetune

    root = tmp_path_factory.mktemp("sft")
    data = write_json(root / "data.json", colour_records(40))
    out = root / "sft"
    finetune(base_run(tmp_path_factory), data, out, overrides=["max_iters=2", "eval_interval=2"],
             progress=False, plot=False, quiet=True)
    return out


def test_eval_of_an_sft_run_scores_its_validation_answers(sft_run, capsys):
    """Without --data: the answers of the val split under the SFT loss mask, the very number
    training recorded as val_loss for the best checkpoint (not a missing val.bin)."""
    assert main(["eval", str(sft_run), "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    metrics = [json.loads(line) for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    best = min(m["val_loss"] for m in metrics if "val_loss" in m)
    assert report["loss"] == pytest.approx(best, rel=1e-5)
    assert report["sequences"] == 4 and report["tokens"] > 0 and "val.jsonl" in report["data"]
    assert main(["eval", str(sft_run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "answer tokens in 4 sequences" in out


def test_eval_of_an_sft_run_on_instruction_data_or_text(sft_run, tmp_path, capsys):
    from finetune_util import colour_records, write_json

    records = write_json(tmp_path / "held.json", colour_records(3))
    assert main(["eval", str(sft_run), "--data", str(records), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["sequences"] == 3
    text = tmp_path / "held.txt"
    text.write_text("What colour is the sky? The sky is blue.", encoding="utf-8")
    assert main(["eval", str(sft_run), "--data", str(text), "--json", "--device", "cpu"]) == 0
    assert "bits_per_byte" in json.loads(capsys.readouterr().out)


def test_eval_of_a_classifier_run_points_to_its_metrics(trained_run, tmp_path, capsys):
    run = tmp_path / "cls"
    run.mkdir()
    config = json.loads((trained_run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "classify": {"labels": ["ham", "spam"]}}))
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lyre: error:") and err.count("\n") == 1
    assert "is a classifier" in err and "classification.json" in err and "lyre classify" in err


def test_eval_of_a_dpo_run_scores_its_chosen_answers(tmp_path_factory, capsys):
    from finetune_util import base_run, preference_records, write_json

    from lyre.finetune.command import finetune

    root = tmp_path_factory.mktemp("dpo")
    data = write_json(root / "prefs.json", preference_records(20))
    out = root / "dpo"
    finetune(base_run(tmp_path_factory), data, out, task="dpo", overrides=["max_iters=1", "eval_interval=1"],
             progress=False, plot=False, quiet=True)
    capsys.readouterr()  # what training printed
    assert main(["eval", str(out), "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"].startswith("the chosen answers of the validation split")
    assert report["sequences"] == 2 and report["loss"] > 0
