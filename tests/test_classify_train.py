"""Classification fine-tuning end to end: the run, the head, what trains, resume, LoRA, use, bad input."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from classify_util import TRAIN_SETTINGS, spam_rows, tiny_base, tiny_classifier, write_tsv

from lyre.classify.finetune import finetune_classifier
from lyre.classify.metrics import classification_report, format_report
from lyre.classify.model import SequenceClassifier, pad_batch, score, set_trainable
from lyre.classify.predict import load_classifier
from lyre.cli import main
from lyre.core.errors import LyreError
from lyre.finetune.lora import LoRAConfig
from lyre.model import build_model
from lyre.run.config import load_config

SMS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sms_spam.tsv"
SPAM = "Congratulations! voucher waiting, reply 04567891234 now"
HAM = "thanks meet me at the station tonight"


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    return tiny_base(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def classifier(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    return write_tsv(tmp_path_factory.mktemp("data") / "spam.tsv", spam_rows(120))


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what earlier steps printed
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- the run -------------------------------------------------------------------------------


def test_a_classifier_run_holds_its_labels_report_and_plots(classifier):
    config = json.loads((classifier / "config.json").read_text())
    assert config["finetune"]["task"] == "classify"
    assert sorted(config["classify"]["labels"]) == ["ham", "spam"]
    assert config["classify"]["pad_id"] == 0  # the BPE tokenizer's <|endoftext|>
    report = json.loads((classifier / "classification.json").read_text())
    assert report["checkpoint"] == "best"
    for split in ("train", "val", "test"):
        part = report[split]
        assert sum(map(sum, part["confusion"])) == part["rows"]
        assert [c["label"] for c in part["classes"]] == config["classify"]["labels"]
        assert {"precision", "recall", "f1", "support"} <= set(part["classes"][0])
    assert report["val"]["accuracy"] >= 0.9 and report["test"]["accuracy"] >= 0.9
    evals = [json.loads(line) for line in (classifier / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "val_accuracy" in r]
    assert [round(r["epoch"], 6) for r in evals] == [1.0, 2.0, 3.0]  # one evaluation per epoch
    assert (classifier / "classify.png").stat().st_size > 0
    assert sorted(p.name for p in (classifier / "data").glob("*.jsonl")) == ["test.jsonl", "train.jsonl", "val.jsonl"]


def test_metrics_table():
    report = classification_report([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], ["ham", "spam"], loss=0.5)
    assert report["accuracy"] == pytest.approx(0.6)
    assert report["confusion"] == [[1, 1], [1, 2]]
    spam = report["classes"][1]
    assert (spam["precision"], spam["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    never = classification_report([0, 1], [0, 0], ["a", "b"])["classes"][1]
    assert never["precision"] == 0.0 and never["f1"] == 0.0  # never predicted: 0, not an error
    table = format_report(report, "test")
    assert "test: accuracy 60.00% on 5 rows" in table and "precision" in table and "confusion" in table


# ---- using it --------------------------------------------------------------------------------


def test_python_api_labels_texts(classifier):
    clf = load_classifier(classifier, device="cpu")
    spam, ham = clf.classify([SPAM, HAM])
    assert (spam.label, ham.label) == ("spam", "ham")
    assert 0.5 < spam.probability <= 1.0
    assert sum(spam.probabilities.values()) == pytest.approx(1.0)
    assert not spam.truncated and spam.tokens > 0
    with pytest.raises(LyreError, match="text 2 is empty"):
        clf.classify([SPAM, "  "])


def test_cli_labels_arguments_files_and_stdin(classifier, tmp_path, capsys, monkeypatch):
    code, out, _ = run_cli(capsys, "classify", classifier, SPAM)
    label, probability = out.strip().split("\t")
    assert code == 0 and label == "spam" and 0.5 < float(probability) <= 1
    code, out, _ = run_cli(capsys, "classify", classifier, SPAM, HAM, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["label"] for r in rows] == ["spam", "ham"] and rows[0]["text"] == SPAM
    assert all(0.5 < r["probability"] <= 1 for r in rows)
    texts = tmp_path / "texts.txt"
    texts.write_text(f"{HAM}\n\n{SPAM}\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "classify", classifier, "--file", texts)
    assert [line.split("\t")[0] for line in out.splitlines()] == ["ham", "spam"]  # blank line skipped
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(f"{SPAM}\n{HAM}\n".encode())))
    code, out, _ = run_cli(capsys, "classify", classifier)
    assert code == 0 and [line.split("\t")[0] for line in out.splitlines()] == ["spam", "ham"]


def test_padding_and_batch_mates_change_no_answer(classifier):
    clf = load_classifier(classifier, device="cpu")
    seqs = [clf.tokenizer.encode(t)[:clf.limit] for t in (SPAM, HAM, "ok", SPAM + " " + HAM)]
    alone = torch.cat([score(clf.model, [s], 0) for s in seqs])
    together = score(clf.model, seqs, 0, batch_size=4)
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=0)
    clf.model.pooling = "mean"
    alone = torch.cat([score(clf.model, [s], 0) for s in seqs])
    torch.testing.assert_close(alone, score(clf.model, seqs, 0, batch_size=4), atol=1e-5, rtol=0)


def test_long_texts_are_cut_and_said_once(classifier, capsys):
    long = " ".join([SPAM] * 20)
    code, out, err = run_cli(capsys, "classify", classifier, long, long, HAM)
    assert code == 0 and len(out.splitlines()) == 3
    assert err.count("longer than the context") == 1 and "2 text(s)" in err


# ---- the model -------------------------------------------------------------------------------


def test_pooling_positions():
    from lyre.classify.model import pool

    states = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)  # row 0: 0 1 2, row 1: 3 4 5
    lengths = torch.tensor([2, 3])
    assert pool(states, lengths, "last_nonpad").flatten().tolist() == [1.0, 5.0]
    assert pool(states, lengths, "last").flatten().tolist() == [2.0, 5.0]
    assert pool(states, lengths, "mean").flatten().tolist() == [0.5, 4.0]
    ids, lens = pad_batch([[5, 6], [7]], pad_id=9, pad_to=4)
    assert ids.tolist() == [[5, 6, 9, 9], [7, 9, 9, 9]] and lens.tolist() == [2, 1]


@pytest.mark.parametrize("mode, expected", [
    ("head", {"head.weight"}),
    ("blocks", {"head.weight", "base.transformer.ln_f", "base.transformer.h.1"}),
    ("all", {"head.weight", "base.transformer"}),
    ("lora", {"head.weight", "lora_A", "lora_B"}),
])
def test_what_trains(base, mode, expected):
    config = load_config(base / "config.json")
    model = SequenceClassifier(build_model(config.model), 3)
    trainable, total = set_trainable(model, mode, 1, LoRAConfig(rank=2))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(any(e in n for e in expected) for n in names)
    assert all(any(n.startswith(e) or e in n for n in names) for e in expected)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    assert trainable < total or mode == "all"
    if mode == "blocks":
        assert not any("h.0." in n for n in names)
    with pytest.raises(LyreError, match="has 2 blocks"):
        set_trainable(SequenceClassifier(build_model(config.model), 2), "blocks", 3)


def test_pooling_last_pads_every_batch_to_the_longest_training_text(base, data, tmp_path):
    out = tmp_path / "last"
    finetune_classifier(base, data, out, overrides=[*TRAIN_SETTINGS, "pooling=last", "max_iters=2"],
                        progress=False, quiet=True, plot=False)
    cls = json.loads((out / "config.json").read_text())["classify"]
    longest = max(len(load_classifier(out).tokenizer.encode(json.loads(line)["text"]))
                  for line in (out / "data" / "train.jsonl").read_text().splitlines())
    assert cls["pad_to"] == longest
    clf = load_classifier(out)
    one = clf.classify([HAM])[0].probability
    assert clf.classify([HAM, SPAM + SPAM])[0].probability == pytest.approx(one, abs=1e-6)


# ---- resume, LoRA --------------------------------------------------------------------------


def _weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


def test_crop_cuts_a_share_of_the_texts_to_prefixes_deterministically():
    from lyre.classify.task import crop

    seqs = [list(range(50)) for _ in range(400)]
    cut = crop(seqs, 0.5, seed=3, epoch=1, position=8)
    assert cut == crop(seqs, 0.5, seed=3, epoch=1, position=8)  # resume draws the same
    assert cut != crop(seqs, 0.5, seed=3, epoch=1, position=16)
    assert all(1 <= len(c) <= 50 and c == s[: len(c)] for c, s in zip(cut, seqs, strict=True))
    assert 150 < sum(len(c) < 50 for c in cut) < 250
    assert crop(seqs, 0.0, 3, 1, 8) == seqs


def test_n_steps_then_resume_equals_2n_straight(base, data, tmp_path):
    settings = [*TRAIN_SETTINGS, "max_iters=14", "dropout=0.1", "crop=0.5"]  # 10 steps an epoch: crosses one
    straight = finetune_classifier(base, data, tmp_path / "straight", overrides=settings,
                                   progress=False, quiet=True, plot=False)
    finetune_classifier(base, data, tmp_path / "split", overrides=settings, progress=False,
                        quiet=True, plot=False, stop_at=7)
    resumed = finetune_classifier(out=tmp_path / "split", resume=True, progress=False, quiet=True,
                                  plot=False)
    assert resumed.train.step == straight.train.step == 14
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.report["test"] == straight.report["test"]


def test_lora_checkpoints_hold_adapters_and_head_only(base, data, tmp_path, capsys):
    out = tmp_path / "lora"
    result = finetune_classifier(base, data, out, lora_rank=2, overrides=["epochs=2", "threads=1"],
                                 progress=False, quiet=True, plot=False)
    keys = set(_weights(out, "best"))
    assert "head.weight" in keys and all(k == "head.weight" or "lora_" in k for k in keys)
    config = json.loads((out / "config.json").read_text())
    assert config["classify"]["trainable"] == "lora" and config["lora"]["rank"] == 2
    assert config["finetune"]["base_sha256"]
    assert result.report["test"]["rows"] > 0
    code, out_text, _ = run_cli(capsys, "classify", out, SPAM)
    assert code == 0 and out_text.split("\t")[0] in ("spam", "ham")
    # A base that changed since: the adapters were learned for other weights.
    moved = tmp_path / "base-copy"
    shutil.copytree(base, moved)
    config["finetune"]["base"] = str(moved)
    (out / "config.json").write_text(json.dumps(config))
    state = moved / "checkpoints" / config["finetune"]["base_checkpoint"] / "state.json"
    meta = json.loads(state.read_text())
    meta["files"]["model.safetensors"]["sha256"] = "0" * 64
    state.write_text(json.dumps(meta))
    code, _, err = run_cli(capsys, "classify", out, SPAM)
    assert code == 2 and "changed since" in err


# ---- bad input -------------------------------------------------------------------------------


def test_classify_refuses_what_is_not_a_classifier(base, classifier, tmp_path, capsys):
    code, _, err = run_cli(capsys, "classify", base, "hello")
    assert code == 2 and "is not a classifier" in err and "kind 'lm'" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "classify", classifier, "")
    assert code == 2 and "empty" in err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    code, _, err = run_cli(capsys, "classify", classifier, "--file", bad)
    assert code == 2 and "not UTF-8" in err
    code, _, err = run_cli(capsys, "classify", tmp_path / "nowhere", "hi")
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(capsys, "sample", classifier)
    assert code == 2 and "is a classifier" in err


def test_bad_data_fails_before_anything_is_written(base, classifier, tmp_path, capsys, tree_digest):
    one_class = write_tsv(tmp_path / "one.tsv", [("ham", f"text {i}") for i in range(20)])
    out = tmp_path / "never"
    code, _, err = run_cli(capsys, "finetune", base, "--task", "classify", "--data", one_class, "--out", out)
    assert code == 2 and "one class only" in err and not out.exists()
    code, _, err = run_cli(capsys, "finetune", base, "--task", "classify", "--data", one_class, "--out", out,
                           "--template", "alpaca")
    assert code == 2 and "--template" in err
    before = tree_digest(classifier)
    data = write_tsv(tmp_path / "ok.tsv", spam_rows(40))
    code, _, err = run_cli(capsys, "finetune", base, "--task", "classify", "--data", data, "--out", classifier)
    assert code == 2 and "already holds a run" in err
    code, _, err = run_cli(capsys, "finetune", base, "--task", "classify", "--data", data, "--out", out,
                           "--set", "pooling=first")
    assert code == 2 and "classify.pooling must be one of" in err and not out.exists()
    code, _, err = run_cli(capsys, "finetune", classifier, "--task", "classify", "--data", data, "--out", out)
    assert code == 2 and "already a classifier" in err
    assert tree_digest(classifier) == before


# ---- acceptance ------------------------------------------------------------------------------


@pytest.mark.skipif(not SMS.is_file(), reason=f"shared data {SMS} not present")
def test_acceptance_spam_from_the_sms_data(base, tmp_path, capsys):
    """The issue's acceptance, the plain command on the whole SMS file: lyre's defaults (every
    weight, lr 3e-4 cosine, crop augmentation, 5 epochs), no recipe flag; the base is the tiny
    one of these tests (one thread: the test's only setting)."""
    out = tmp_path / "spam"
    code, _, err = run_cli(capsys, "finetune", base, "--task", "classify", "--data", SMS, "--out", out,
                           "--set", "threads=1", "--no-progress")
    assert code == 0, err
    code, out_text, _ = run_cli(capsys, "classify", out, "WINNER!! Claim your free prize now")
    label, probability = out_text.strip().split("\t")
    assert code == 0 and label == "spam" and 0.5 < float(probability) <= 1.0


def test_resume_through_the_cli(base, data, tmp_path, capsys):
    out = tmp_path / "cli"
    code, _, err = run_cli(capsys, "finetune", base, "--task", "classify", "--data", data, "--out", out,
                           "--set", "max_iters=3", "--set", "threads=1", "--no-progress")
    assert code == 0, err
    code, text, err = run_cli(capsys, "train", "--resume", out, "--set", "max_iters=5", "--no-progress")
    assert code == 0, err
    assert "step 5" in text and "test accuracy" in text
    assert json.loads((out / "config.json").read_text())["train"]["max_iters"] == 5
    code, _, err = run_cli(capsys, "finetune", "--resume", out, "--set", "max_iters=6", "--no-progress")
    assert code == 0, err
    code, _, err = run_cli(capsys, "finetune", "--resume", out, "--data", data)
    assert code == 2 and "drop --data" in err


def test_early_stop_on_val_accuracy(base, data, tmp_path):
    result = finetune_classifier(base, data, tmp_path / "early",
                                 overrides=[*TRAIN_SETTINGS, "epochs=8", "early_stop=2"],
                                 progress=False, quiet=True, plot=False)
    assert result.train.stopped_early and "without a better val accuracy" in result.train.stopped_early
    assert result.train.step < result.prepared.config.train.max_iters
    assert result.report["checkpoint"] == "best" and result.report["test"]["rows"] == 24


# ---- options: last+mean pooling, label smoothing ----------------------------------------------


def test_last_plus_mean_pooling_reads_both_side_by_side(base):
    from lyre.classify.model import pool

    states = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)  # row 0: 0 1 2, row 1: 3 4 5
    both = pool(states, torch.tensor([2, 3]), "last+mean")
    assert both.tolist() == [[1.0, 0.5], [5.0, 4.0]]  # [last non-pad, mean over real tokens]
    model = SequenceClassifier(build_model(load_config(base / "config.json").model), 3, "last+mean")
    assert model.head.in_features == 2 * model.config.n_embd
    ids, lengths = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert model(ids, lengths=lengths)[0].shape == (2, 3)


def test_label_smoothing_is_the_training_loss(base, data, tmp_path):
    from types import SimpleNamespace

    from lyre.classify.config import ClassifyConfig
    from lyre.classify.task import ClassificationTask

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    labels = torch.tensor([0, 1])
    task = ClassificationTask.__new__(ClassificationTask)  # only its loss is asked for
    task.config = SimpleNamespace(extras={"classify": ClassifyConfig(label_smoothing=0.1)})
    forward = lambda ids, targets, lengths: (logits, None)  # noqa: E731
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert task.loss(forward, (None, None, labels)).item() == pytest.approx(expected.item())
    assert expected.item() > torch.nn.functional.cross_entropy(logits, labels).item()
    with pytest.raises(LyreError, match="label_smoothing"):
        ClassifyConfig(label_smoothing=1.0).validate()
    out = tmp_path / "smooth"
    finetune_classifier(base, data, out, overrides=[*TRAIN_SETTINGS, "label_smoothing=0.1",
                                                    "pooling=last+mean", "max_iters=2"],
                        progress=False, quiet=True, plot=False)
    cls = json.loads((out / "config.json").read_text())["classify"]
    assert cls["label_smoothing"] == 0.1 and cls["pooling"] == "last+mean"
    assert load_classifier(out).classify([HAM])[0].label in ("ham", "spam")


# ---- one house: the CLI, the run's kind, the selection metric -------------------------------


def test_cli_takes_options_between_the_run_and_its_texts(classifier, capsys):
    """`lyre classify RUN --json TEXT`: an option may sit between RUN and the texts (19.12)."""
    code, out, _ = run_cli(capsys, "classify", classifier, "--json", SPAM, "--batch-size", "2", HAM)
    assert code == 0 and [json.loads(line)["label"] for line in out.splitlines()] == ["spam", "ham"]
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "classify", classifier, "--bogus", SPAM)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage: lyre classify" in err and "unrecognized arguments: --bogus" in err


def test_a_classifier_is_kind_classify_and_picks_on_val_accuracy(classifier):
    """RunDir.kind() names the run (19.1); the checkpoint says which metric `best` holds (19.7)."""
    from lyre.run.rundir import RunDir

    assert RunDir(classifier).kind() == "classify" and not RunDir(classifier).uses_lora()
    saved = json.loads((classifier / "checkpoints" / "best" / "state.json").read_text())
    state = saved.get("state", saved)  # the trainer's state sits beside the files' digests
    assert state["best_metric_name"] == "val_accuracy" and "best_val_loss" not in state
    assert 0.5 <= state["best_metric"] <= 1.0


def test_info_reads_a_classifier_run_in_a_fresh_process(classifier):
    """Every section is declared by lyre.run.config: a process that never imported lyre.classify
    reads the run's config.json (19.1)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "lyre", "info", str(classifier)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "parameters" in done.stdout.lower()


def test_finetune_classifier_is_the_one_driver(base, data, tmp_path):
    """finetune_classifier is `finetune(task="classify")`: the same result type, the task's
    report, the selection metric by name (19.4, 19.7)."""
    from lyre.finetune.command import FinetuneResult, finetune

    result = finetune(base, data, tmp_path / "run", task="classify", progress=False, quiet=True,
                      plot=False, overrides=[*TRAIN_SETTINGS, "epochs=1", "max_iters=3"])
    assert isinstance(result, FinetuneResult) and result.task.name == "classify"
    assert result.train.metric_name == "val_accuracy" and result.train.best_val_loss is None
    assert result.report["test"]["rows"] > 0
    assert "best val accuracy" in result.summary()


def test_the_report_is_scored_on_the_runs_threads(base, data, tmp_path, monkeypatch):
    """The final report (every split of the best checkpoint) runs on train.threads as the
    loop did, not on torch's default: 123 s instead of 11 s on a shared 2-core VM (19.19)."""
    import lyre.classify.finetune as cf

    seen = []
    real = cf.evaluate_classifier

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(cf, "evaluate_classifier", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = finetune_classifier(base, data, tmp_path / "run", progress=False, quiet=True,
                                     plot=False, overrides=[*TRAIN_SETTINGS, "epochs=1", "max_iters=2"])
        assert seen == [1] and torch.get_num_threads() == 2
        assert result.report["test"]["rows"] > 0
    finally:
        torch.set_num_threads(before)
