"""Text classification: a GPT that labels text (spam or not), chapter 6 of the book.

    config.py    the [classify] section of a classifier run (labels, data, pooling, what trains)
    data.py      labelled TSV / CSV / JSONL: detection, bad rows, balance, 70/10/20 split
    encode.py    texts -> token ids, cut to the context (counted)
    model.py     SequenceClassifier: the base model's hidden states, pooled, a linear head;
                 which parameters train
    build.py     build a classifier from a config, from its base run or its own checkpoint
    metrics.py   accuracy, per-class precision / recall / F1, confusion matrix, tables
    task.py      `--task classify`: the trainer task and the fine-tuning driver's hooks
    finetune.py  finetune_classifier (the one driver with task="classify"), the final report
    predict.py   `lyre classify`, the Python API and the server's classification route
    export.py    Hugging Face GPT2ForSequenceClassification export
    plot.py      loss and accuracy per epoch

The training objective is the trainer task in task.py; the fine-tuning driver (lyre.finetune)
runs it like any other fine-tuning task.

    from lyre.classify import finetune_classifier, load_classifier
    finetune_classifier("runs/base", "sms_spam.tsv", "runs/spam", overrides=["balance=true"])
    load_classifier("runs/spam").classify("You have won a free prize. Call 09061701461 now")[0].label

The names below load their module on first use, so importing lyre.classify (or one of its
modules, such as the config section) does not pull in the trainer.
"""

from __future__ import annotations

from lyre.core.lazy import lazy_exports

_EXPORTS = {
    "ClassifyConfig": "lyre.classify.config",
    "is_classifier": "lyre.classify.config",
    "SequenceClassifier": "lyre.classify.model",
    "finetune_classifier": "lyre.classify.finetune",
    "evaluate_classifier": "lyre.classify.finetune",
    "Classifier": "lyre.classify.predict",
    "Prediction": "lyre.classify.predict",
    "load_classifier": "lyre.classify.predict",
    "classify": "lyre.classify.predict",
    "export_classifier_hf": "lyre.classify.export",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
