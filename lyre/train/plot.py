"""Loss curves of a run, drawn from its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from lyre.core.errors import LyreError

_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise LyreError(f"{path} not found: has this run trained yet?")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: skip it, keep the rest
    return records


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw step-wise training loss and periodic train/val evaluations; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    if not steps and not evals:
        raise LyreError(f"{run_dir / 'metrics.jsonl'} has no loss records yet; plot again after a few steps")
    out = Path(out) if out else run_dir / "loss.png"
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in _FORMATS:
        raise LyreError(f"cannot draw {out}: use a file name ending in one of .{', .'.join(_FORMATS)}")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if steps:
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, alpha=0.6,
                label="train (batch)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-", label="train (eval)")
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside `out` then renamed, so a viewer never shows half a file; the format is
    # given explicitly because the temporary name's suffix is not the real one.
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format=fmt, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out)
    return out
