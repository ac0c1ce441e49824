"""Hugging Face export of classifiers: GPT2ForSequenceClassification gives lyre's logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from classify_util import spam_rows, tiny_base, tiny_classifier, write_tsv

from lyre.classify.export import export_classifier_hf
from lyre.classify.finetune import finetune_classifier
from lyre.classify.model import score
from lyre.classify.predict import load_classifier
from lyre.cli import main
from lyre.core.errors import LyreError

transformers = pytest.importorskip("transformers")

TEXTS = ["WIN! cash waiting, call 01234567890 now", "ok see you at lunch later", "hi",
         "sorry I'm at the station tonight, reply when you can"]


@pytest.fixture(scope="session")
def classifier(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.getbasetemp())


def hf_logits(out: Path, clf) -> tuple[torch.Tensor, torch.Tensor]:
    """(one text at a time, all in one right-padded batch) logits of the exported model."""
    model = transformers.GPT2ForSequenceClassification.from_pretrained(out).eval()
    seqs = [clf.tokenizer.encode(t) for t in TEXTS]
    with torch.no_grad():
        alone = torch.cat([model(torch.tensor([s])).logits for s in seqs])
        width = max(map(len, seqs))
        pad = model.config.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = (torch.arange(width) < torch.tensor([len(s) for s in seqs]).unsqueeze(1)).long()
        batch = model(ids, attention_mask=mask).logits
    return alone, batch


def test_exported_classifier_gives_lyres_logits_and_labels(classifier, tmp_path):
    out = export_classifier_hf(classifier, tmp_path / "hf")
    clf = load_classifier(classifier, device="cpu")
    ours = score(clf.model, [clf.tokenizer.encode(t) for t in TEXTS], clf.section.pad_id)
    alone, batch = hf_logits(out, clf)
    assert (alone - ours).abs().max().item() < 1e-4
    assert (batch - ours).abs().max().item() < 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert [config["id2label"][str(i)] for i in range(2)] == clf.labels
    auto = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert auto.config.id2label == dict(enumerate(clf.labels))
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer(TEXTS[0])["input_ids"] == clf.tokenizer.encode(TEXTS[0])
    assert tokenizer.pad_token_id == config["pad_token_id"] == clf.section.pad_id


def test_lora_classifier_exports_merged(tmp_path_factory, tmp_path):
    root = tmp_path_factory.getbasetemp()
    data = write_tsv(tmp_path / "spam.tsv", spam_rows(60, seed=4))
    run = tmp_path / "lora"
    finetune_classifier(tiny_base(root), data, run, lora_rank=2, overrides=["epochs=1", "threads=1"],
                        progress=False, quiet=True, plot=False)
    out = export_classifier_hf(run, tmp_path / "hf")
    clf = load_classifier(run, device="cpu")
    ours = score(clf.model, [clf.tokenizer.encode(t) for t in TEXTS], clf.section.pad_id)
    alone, batch = hf_logits(out, clf)
    assert (alone - ours).abs().max().item() < 1e-4 and (batch - ours).abs().max().item() < 1e-4


def test_export_through_the_cli_and_refusals(classifier, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export-hf", str(classifier), "--out", str(out)]) == 0
    assert "AutoModelForSequenceClassification" in capsys.readouterr().out
    assert main(["export-hf", str(classifier), "--out", str(out)]) == 2  # not empty
    assert "--force" in capsys.readouterr().err
    assert main(["export-hf", str(classifier), "--out", str(out), "--force"]) == 0
    mean = tmp_path / "mean"
    shutil.copytree(classifier, mean)
    config = json.loads((mean / "config.json").read_text())
    config["classify"]["pooling"] = "mean"
    (mean / "config.json").write_text(json.dumps(config))
    with pytest.raises(LyreError, match="last non-padding token"):
        export_classifier_hf(mean, tmp_path / "never")
    assert not (tmp_path / "never").exists()
