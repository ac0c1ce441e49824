"""The demo's quality bar: lyre's Iliad preset against nanoGPT's CPU recipe on the same corpus.

    python bench/demo_quality.py [--threads N] [--repeats R] [--out DIR] [--scale S] [--smoke]

Trains, back to back on this machine with the same torch thread count:

  (a) nanoGPT's CPU recipe (lyre/presets/shakespeare-char-cpu.toml: 4 layers, 4 heads, 128 dims,
      block 64, batch 12, lr 1e-3 cosine to 1e-4 over 2000 iters, warmup 100, learned
      positions, LayerNorm, GELU, biases, tied head) with the corpus swapped for the bundled Iliad;
  (b) lyre/presets/iliad-char.toml, the default demo (`make demo`).

Both read the same prepared data (char tokenizer, the Iliad's last 10% as val), so the two
val losses are the same measurement: the exact mean cross-entropy over the whole val split
(sliding windows, stride = block_size). Times are the wall-clock of `lyre.train.trainer.train()` (the
training steps, the periodic evals and checkpoints and the final exact eval; data preparation is
done once beforehand and shared). CPU time of the process is printed beside it: on a busy
machine it is the steadier number. With --repeats R > 1 the pair runs R times in alternating
order (a b, b a, ...) and the median time of each is reported (losses are deterministic).

Acceptance (issue 2): val_loss_gain = nanogpt_val_loss - lyre_val_loss >= 0.15 and
time_ratio = nanogpt_s / lyre_s >= 1.0. Ends with one JSON line. --smoke: --scale 0.005 (about
ten steps each) on the Iliad's first 100 KB, one thread, one repeat: the same code in seconds,
the figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import add_smoke_flag, json_line, machine

from lyre.data.corpus import prepare
from lyre.run.config import BUNDLED_ILIAD, list_presets, load_config
from lyre.train.trainer import train

NANOGPT_PRESET = list_presets()["shakespeare-char-cpu"]
LYRE_PRESET = list_presets()["iliad-char"]


def run_one(
    preset: Path, data_dir: Path, run_dir: Path, threads: int, extra: list[str], scale: float = 1.0,
    corpus: Path = BUNDLED_ILIAD,
) -> dict:
    overrides = [
        f"data.corpus={json.dumps(str(corpus))}",
        f"data.data_dir={json.dumps(str(data_dir))}",
        f"train.threads={threads}",
        'train.device="cpu"',
        *extra,
    ]
    config = load_config(preset, overrides)
    if scale != 1.0:  # a quick check of the bench itself: every step count scaled alike
        t = config.train
        t.max_iters = max(1, round(t.max_iters * scale))
        t.warmup_iters = round(t.warmup_iters * scale)
        t.lr_decay_iters = round(t.lr_decay_iters * scale)
        t.eval_interval = max(1, round(t.eval_interval * scale))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = train(config, run_dir, force=True, progress=False, plot=False)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    m = config.model
    desc = (f"{m.n_layer}L x {m.n_embd}d, block {m.block_size}, batch {config.train.batch_size}, "
            f"{config.train.max_iters} iters, pos={m.pos} norm={m.norm} act={m.act} bias={m.bias}")
    return {"val_loss": result.val_loss, "wall_s": wall, "cpu_s": cpu, "desc": desc}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch CPU threads for both runs (default: torch's default, %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="train the pair R times, alternating order")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--set", dest="lyre_set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of the lyre preset (for experiments)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="scale both runs' step counts (e.g. 0.05 for a quick check; the bar is "
                             "judged at 1.0)")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.scale, args.threads, args.repeats = 0.005, 1, 1

    base = nanogpt_check()
    with tempfile.TemporaryDirectory(prefix="lyre-demo-quality-") as tmp:
        out = args.out or Path(tmp)
        data_dir, corpus = out / "data", BUNDLED_ILIAD
        if args.smoke:  # a small val split: the exact evaluation at the end is quick
            corpus = out / "iliad-100k.txt"
            corpus.write_text(BUNDLED_ILIAD.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
        if not (data_dir / "meta.json").exists():
            prepare([corpus], "char", data_dir, val_fraction=0.1)
        runs = {"nanogpt": [], "lyre": []}
        # --smoke: the periodic evals (every step or two at that scale) score 8 windows, not 64.
        common = ["train.eval_windows=8"] if args.smoke else []
        presets = {"nanogpt": (NANOGPT_PRESET, common), "lyre": (LYRE_PRESET, [*common, *args.lyre_set])}
        for r in range(args.repeats):
            order = ["nanogpt", "lyre"] if r % 2 == 0 else ["lyre", "nanogpt"]
            for name in order:
                preset, extra = presets[name]
                res = run_one(preset, data_dir, out / f"{name}-{r}", args.threads, extra, args.scale, corpus)
                runs[name].append(res)
                print(f"[{r + 1}/{args.repeats}] {name:8s} val {res['val_loss']:.4f}  "
                      f"wall {res['wall_s']:7.1f}s  cpu {res['cpu_s']:7.1f}s   ({res['desc']})", flush=True)

    def summary(name: str) -> tuple[float, float, float]:
        rs = runs[name]
        return (rs[0]["val_loss"], statistics.median(r["wall_s"] for r in rs),
                statistics.median(r["cpu_s"] for r in rs))

    a_loss, a_s, a_cpu = summary("nanogpt")
    b_loss, b_s, b_cpu = summary("lyre")
    gain, ratio = a_loss - b_loss, a_s / b_s
    print()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(base)
    print(f"nanoGPT CPU recipe on the Iliad: val loss {a_loss:.4f}  in {a_s:.1f}s (cpu {a_cpu:.1f}s)")
    print(f"lyre iliad-char.toml           : val loss {b_loss:.4f}  in {b_s:.1f}s (cpu {b_cpu:.1f}s)")
    print(f"gain {gain:+.4f} (bar: >= 0.15)   time ratio nanoGPT/lyre {ratio:.3f} (bar: >= 1.0)   "
          f"{'PASS' if gain >= 0.15 and ratio >= 1.0 else 'FAIL'}")
    json_line({
        "bench": "demo_quality",
        "nanogpt_val_loss": round(a_loss, 4),
        "lyre_val_loss": round(b_loss, 4),
        "val_loss_gain": round(gain, 4),
        "nanogpt_s": round(a_s, 2),
        "lyre_s": round(b_s, 2),
        "time_ratio": round(ratio, 3),
        "nanogpt_cpu_s": round(a_cpu, 2),
        "lyre_cpu_s": round(b_cpu, 2),
        "threads": args.threads,
        "repeats": args.repeats,
        "scale": args.scale,
        "smoke": args.smoke,
    })
    return 0


def nanogpt_check() -> str:
    """The baseline must stay nanoGPT's recipe: fail loudly if the preset drifted."""
    c = load_config(NANOGPT_PRESET)
    m, t = c.model, c.train
    expected = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=True,
                    pos="learned", norm="layernorm", act="gelu", tie_embeddings=True,
                    batch_size=12, grad_accum=1, max_iters=2000, lr=1e-3, min_lr=1e-4,
                    warmup_iters=100, beta2=0.99, weight_decay=0.1, grad_clip=1.0, schedule="cosine")
    got = {k: getattr(m, k) if hasattr(m, k) else getattr(t, k) for k in expected}
    drift = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
    if drift:
        sys.exit(f"{NANOGPT_PRESET.name} is no longer nanoGPT's CPU recipe: {drift}")
    return f"baseline preset {NANOGPT_PRESET.name} checked against nanoGPT's recipe"


if __name__ == "__main__":
    sys.exit(main())
