"""Loss and accuracy per epoch of a classifier run, from its metrics.jsonl (RUN/classify.png)."""

from __future__ import annotations

from pathlib import Path

from lyre.core.errors import LyreError
from lyre.train.plot import read_metrics


def plot_classifier(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Left: training loss (per logged step) and train/val loss per evaluation; right: train
    and val accuracy. The x axis counts epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    evals = [r for r in records if "val_accuracy" in r and r.get("epoch")]
    steps = [r for r in records if "loss" in r]
    if not evals:
        raise LyreError(f"{run_dir / 'metrics.jsonl'} has no classifier evaluation yet")
    per_epoch = evals[0]["step"] / evals[0]["epoch"]  # steps per epoch
    out = Path(out) if out else run_dir / "classify.png"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    epochs = [r["epoch"] for r in evals]
    left.plot([r["step"] / per_epoch for r in steps], [r["loss"] for r in steps], lw=1, alpha=0.4,
              color="C0", label="train (batch)")
    left.plot(epochs, [r["train_loss"] for r in evals], "o-", color="C0", label="train")
    left.plot(epochs, [r["val_loss"] for r in evals], "o-", color="C1", label="val")
    left.set_ylabel("cross-entropy loss")
    right.plot(epochs, [r["train_accuracy"] for r in evals], "o-", color="C0", label="train")
    right.plot(epochs, [r["val_accuracy"] for r in evals], "o-", color="C1", label="val")
    right.set_ylabel("accuracy")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(run_dir.name)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out)
    return out
