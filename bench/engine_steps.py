"""Engine-only timing of one tree, to A/B a change against another checkout of lyre.

    PYTHONPATH=NEW python bench/engine_steps.py; PYTHONPATH=OLD python bench/engine_steps.py; ...

Alternate the two trees a few times and compare the best of each: a shared machine drifts, so
only interleaved runs compare. A GPT-2 124M-shaped model (random weights, fp32, CPU) prepared
for inference the way the tree does it (lyre.generate.speed.prepare_for_inference where it exists; older
trees packed the weights inside Engine), a 128-token prompt, 33 new tokens, greedy, batch 1
and 8. Prints one JSON line: prefill seconds and milliseconds per decode step (best of
--repeats). No peer inside: the other tree is the peer. --smoke: a 2-layer, 64-wide model,
8-token prompts, 4 new tokens (the same code in seconds; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import add_smoke_flag

from lyre.engine import Engine, SamplingConfig
from lyre.model import GPT, GPTConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a busy machine)")
    ap.add_argument("--repeats", type=int, default=3)
    add_smoke_flag(ap)
    args = ap.parse_args()
    # (model shape, prompt tokens, new tokens)
    shape, prompt_len, n_new = (dict(vocab_size=50257, block_size=1024), 128, 33)
    if args.smoke:
        shape, prompt_len, n_new = dict(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64), 8, 4
        args.repeats = 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).eval()
    try:
        from lyre.generate.speed import prepare_for_inference
    except ImportError:  # a tree from before lyre.generate.speed: Engine packs the weights itself
        tree = "engine-packs"
    else:
        prepare_for_inference(model)
        tree = "lyre.generate.speed"
    engine = Engine(model)
    gen = torch.Generator().manual_seed(0)
    out: dict = {"bench": "engine_steps", "tree": tree, "threads": torch.get_num_threads(), "smoke": args.smoke}
    for b in (1, 8):
        prompts = torch.randint(0, shape["vocab_size"], (b, prompt_len), generator=gen).tolist()
        params = SamplingConfig(max_new_tokens=n_new, temperature=0, stop_token_ids=[])
        best = None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            batch = engine.new_batch(b, max_length=prompt_len + n_new)
            batch.add(prompts, params)
            t1 = time.perf_counter()
            while batch:
                batch.step()
            timing = (t1 - t0, (time.perf_counter() - t1) / (n_new - 1))
            best = timing if best is None or timing[1] < best[1] else best
        out[f"b{b}_prefill_s"], out[f"b{b}_step_ms"] = round(best[0], 3), round(1e3 * best[1], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
