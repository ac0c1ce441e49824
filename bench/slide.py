"""Generation past the context (`overflow="slide"`): rows re-prefilled together vs one by one.

    python bench/slide.py [--smoke] [--block-size 64] [--new-tokens 8] [--batch 1 32] [--repeats 2]

Once a row has block_size tokens, every new token is predicted from exactly the last block_size
tokens (nanoGPT's `idx[:, -block_size:]`), so each step re-prefills the row's window of
block_size - 1 tokens: no cached key stays valid once the window moves. The engine re-prefills
the windows of all the rows that slide in a step in one forward ("batched", Batch._slide);
before, each row was re-prefilled in a forward of its own ("per-row", the peer here: the same
Batch with that one method put back as it was). Both give the same greedy tokens (checked).

A GPT-2 124M-shaped model (random weights, fp32, CPU, prepared as load_run does) with a context
of --block-size tokens; prompts of block_size - 1 random tokens, so every new token but the
first slides; batch 1 and batch 32 rows. Systems are interleaved in every repeat; the best
repeat is reported. Ends with one JSON line: `batched_vs_per_row_ratio` (tokens/s at the largest
batch, batched / per-row) and each system's `b32_vs_b1_ratio` (how batching pays while sliding).
--smoke: a 2-layer, 64-wide model, context 16, batch 1 and 4, 3 tokens, 1 repeat.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import add_smoke_flag, json_line, machine

from lyre.engine import Batch, Engine, SamplingConfig
from lyre.generate.speed import prepare_for_inference
from lyre.model import GPT, GPTConfig


class PerRowSlideBatch(Batch):
    """The engine before the change: each full row re-prefilled alone."""

    def _slide(self, slots: list[int]) -> None:
        for slot in slots:
            window = self._window(self.rows[slot])[:-1]
            if window:
                self._prefill([slot], [window])
            self.rows[slot].cache_len = len(window)


def run(engine: Engine, batch_cls: type[Batch], prompts: list[list[int]], n_new: int):
    params = SamplingConfig(max_new_tokens=n_new, temperature=0, stop_token_ids=[])
    t0 = time.perf_counter()
    batch = batch_cls(engine, len(prompts))
    rows = batch.add(prompts, params)
    while batch:
        batch.step()
    return time.perf_counter() - t0, [row.tokens for row in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    add_smoke_flag(ap)
    args = ap.parse_args()
    shape = dict(vocab_size=50257)  # GPT-2 124M's
    if args.smoke:
        args.batch, args.new_tokens, args.repeats, args.block_size = [1, 4], 3, 1, 16
        shape = dict(vocab_size=512, n_layer=2, n_head=2, n_embd=64)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = prepare_for_inference(GPT(GPTConfig(**shape, block_size=args.block_size)).eval())
    engine = Engine(model)
    systems = {"batched": Batch, "per-row": PerRowSlideBatch}
    gen = torch.Generator().manual_seed(0)
    results: dict[str, dict] = {}
    for b in args.batch:
        prompts = torch.randint(0, shape["vocab_size"], (b, args.block_size - 1), generator=gen).tolist()
        best: dict[str, float] = {}
        tokens: dict[str, list] = {}
        for _ in range(args.repeats):
            for name, cls in systems.items():  # interleaved
                seconds, tokens[name] = run(engine, cls, prompts, args.new_tokens)
                best[name] = min(best.get(name, seconds), seconds)
                print(f"b{b:<3d} {name:8s} {seconds:8.2f} s  {b * args.new_tokens / seconds:7.2f} tok/s",
                      flush=True)
        assert tokens["batched"] == tokens["per-row"], "the two paths must give the same tokens"
        results[f"b{b}"] = {name: round(b * args.new_tokens / s, 3) for name, s in best.items()}
    top, low = f"b{max(args.batch)}", f"b{min(args.batch)}"
    record = {"bench": "slide", "block_size": args.block_size, "new_tokens": args.new_tokens,
              "tok_s": results, "machine": machine(), "smoke": args.smoke,
              "batched_vs_per_row_ratio": round(results[top]["batched"] / results[top]["per-row"], 3)}
    for name in systems:
        record[f"{name}_{top}_vs_{low}_ratio"] = round(results[top][name] / results[low][name], 3)
    json_line(record)


if __name__ == "__main__":
    main()
