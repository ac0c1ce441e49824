"""How good a classifier is: accuracy, per-class precision / recall / F1, the confusion matrix.

    precision(c) = of the texts predicted c, the share that are c
    recall(c)    = of the texts that are c, the share predicted c
    F1(c)        = their harmonic mean
    confusion[i][j] = texts of class i predicted as class j (rows: truth, columns: prediction)

A class never predicted has precision 0 (scikit-learn's zero_division=0), so a model that
always answers "ham" shows it plainly instead of hiding behind a high accuracy.
"""

from __future__ import annotations

from typing import Any


def classification_report(truth: list[int], predicted: list[int], labels: list[str],
                          loss: float | None = None) -> dict[str, Any]:
    """{"rows", "accuracy", "loss", "macro_f1", "classes": [...], "confusion": [[...]]}"""
    k = len(labels)
    confusion = [[0] * k for _ in range(k)]
    for t, p in zip(truth, predicted, strict=True):
        confusion[t][p] += 1
    classes = []
    for c, name in enumerate(labels):
        hits = confusion[c][c]
        predicted_c = sum(confusion[r][c] for r in range(k))
        support = sum(confusion[c])
        precision = hits / predicted_c if predicted_c else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        classes.append({"label": name, "precision": precision, "recall": recall, "f1": f1,
                        "support": support})
    n = len(truth)
    present = [c for c in classes if c["support"]]
    return {
        "rows": n,
        "accuracy": sum(confusion[c][c] for c in range(k)) / n if n else 0.0,
        "loss": loss,
        "macro_f1": sum(c["f1"] for c in present) / len(present) if present else 0.0,
        "classes": classes,
        "confusion": confusion,
    }


def format_report(report: dict[str, Any], title: str) -> str:
    """The report as a small text table, then the confusion matrix."""
    labels = [c["label"] for c in report["classes"]]
    width = max(9, *(len(name) for name in labels))
    loss = f", loss {report['loss']:.4f}" if report.get("loss") is not None else ""
    lines = [f"{title}: accuracy {report['accuracy']:.2%} on {report['rows']:,} rows"
             f"{loss}, macro F1 {report['macro_f1']:.4f}",
             f"  {'class':<{width}}  precision  recall     f1  support"]
    for c in report["classes"]:
        lines.append(f"  {c['label']:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  "
                     f"{c['f1']:5.4f}  {c['support']:7,}")
    cell = max(6, *(len(name) for name in labels))
    lines.append("  confusion (rows: true, columns: predicted)")
    lines.append(f"  {'':<{width}}  " + "  ".join(f"{name:>{cell}}" for name in labels))
    for name, row in zip(labels, report["confusion"], strict=True):
        lines.append(f"  {name:<{width}}  " + "  ".join(f"{n:>{cell},}" for n in row))
    return "\n".join(lines)
