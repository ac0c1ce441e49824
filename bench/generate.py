"""Generation speed: lyre's engine next to its no-cache path and Hugging Face transformers.

    python bench/generate.py [--smoke] [--batch 1 8] [--repeats 2] [--threads N] [--variants ...]

A GPT-2 124M-shaped model with random weights (fp32, CPU), a 128-token prompt, 256 new tokens,
greedy, batch 1 and batch 8. The same weights are copied into transformers' GPT2LMHeadModel
(its Conv1D stores [in, out], our nn.Linear [out, in]) and a short greedy run checks that both
produce the same tokens. Systems are interleaved inside every repeat, so a noisy neighbour slows
them all alike; the best repeat is reported (and the median, to show the noise).

Reported per system: tokens/s end to end (prefill included), time to first token, decode
tokens/s, and at batch 1 the achieved GB/s of weight reads (a decode step reads every weight
once: memory-bandwidth bound). Variants (--variants): engine (what load_run prepares on a CPU,
lyre.generate.speed: oneDNN-packed Linear weights), engine-transposed (the fallback: weights stored [in, out]),
engine-linear (nn.Linear's [out, in] layout kept), engine-fp16 (fp16 copies of the weights for
few-row products, `--fp16`), engine-int8 (dynamic int8 Linear weights, `--int8`),
engine-bf16 (bf16 weights), nocache (recompute everything every step, logits of every position
included as the model computes them without a cache, over --nocache-tokens
tokens only: it is quadratic), hf (transformers' generate with its cache).

Ends with one JSON line; `b1_vs_hf_ratio` / `b8_vs_hf_ratio` are engine / hf tokens/s.
--smoke: a 2-layer, 64-wide model, batch 1 and 2, 8-token prompts, 4 new tokens, 1 repeat (the
same code in seconds; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch
import torch.nn as nn
from _common import add_smoke_flag

from lyre.engine import Engine, SamplingConfig, generate_without_cache
from lyre.generate.speed import HalfCopyLinear, prepare_for_inference, use_cpu_decode_layout
from lyre.model import GPT, GPTConfig
from lyre.model.gpt import RMSNorm

DEFAULT_VARIANTS = ("engine", "engine-transposed", "engine-linear", "engine-fp16", "engine-int8", "nocache", "hf")


# ----------------------------------------------------------------------------------------------
# Models


GPT2_SHAPE = dict(vocab_size=50257, block_size=1024)  # GPT-2 124M
SMOKE_SHAPE = dict(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64)


def build_models(variants: list[str], shape: dict) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    ours = GPT(GPTConfig(**shape)).eval()
    models = {"engine-linear": ours}
    if "hf" in variants:
        models["hf"] = to_transformers(ours)
    # Each variant as load_run(..., weights=...) prepares it (lyre.generate.speed.prepare_for_inference).
    if "engine-int8" in variants:
        models["engine-int8"] = prepare_for_inference(copy.deepcopy(ours), "int8")
    if "engine-fp16" in variants:
        models["engine-fp16"] = prepare_for_inference(copy.deepcopy(ours), "fp16")
    if "engine-bf16" in variants:
        models["engine-bf16"] = copy.deepcopy(ours).to(torch.bfloat16)
    if "engine" in variants:  # what load_run gives on a CPU by default
        models["engine"] = prepare_for_inference(copy.deepcopy(ours))
    if "engine-transposed" in variants:  # the fallback without oneDNN
        transposed = copy.deepcopy(ours)
        use_cpu_decode_layout(transposed)
        models["engine-transposed"] = transposed
    models["nocache"] = ours
    return models


def to_transformers(model: GPT) -> nn.Module:
    """transformers' GPT2LMHeadModel with our weights (Conv1D weights are [in, out])."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                    n_layer=c.n_layer, n_head=c.n_head)).eval()
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    ours = model.state_dict()
    with torch.no_grad():
        for name, param in hf.transformer.state_dict().items():
            tensor = ours["transformer." + name]
            param.copy_(tensor.t() if name.endswith(conv1d) else tensor)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    return hf


def weight_bytes_per_step(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: every Linear's (its fp16 copy where it has one)
    and the norms'; of the embedding tables one row each, left out (the output layer, tied to
    the token table, reads all of it)."""
    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    total, wrapped = 0, set()
    for name, module in model.named_modules():
        if isinstance(module, HalfCopyLinear):
            total += nbytes([module.weight16, module.bias16])
            wrapped.add(name + ".linear")
        elif isinstance(module, nn.Linear) and name not in wrapped:
            total += nbytes([module.weight, module.bias])
        elif isinstance(module, nn.LayerNorm | RMSNorm):
            total += nbytes(module.parameters(recurse=False))
    return total


# ----------------------------------------------------------------------------------------------
# One timed run per system: (time to first token, total seconds, tokens)


def run_engine(model: nn.Module, prompts: list[list[int]], n_new: int):
    engine = Engine(model)  # uses each variant as it was built
    params = SamplingConfig(max_new_tokens=n_new, temperature=0, stop_token_ids=[])
    t0 = time.perf_counter()
    batch = engine.new_batch(len(prompts), max_length=len(prompts[0]) + n_new)
    rows = batch.add(prompts, params)  # prefill + first token
    ttft = time.perf_counter() - t0
    while batch:
        batch.step()
    return ttft, time.perf_counter() - t0, [row.tokens for row in rows]


def run_nocache(model: nn.Module, prompts: list[list[int]], n_new: int):
    t0 = time.perf_counter()
    generate_without_cache(model, prompts, 1)
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens = generate_without_cache(model, prompts, n_new)
    return ttft, time.perf_counter() - t0, tokens


def run_hf(model: nn.Module, prompts: list[list[int]], n_new: int):
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        """Notes when generate hands out its first new token (its second `put`)."""

        def __init__(self) -> None:
            self.calls, self.at = 0, None

        def put(self, value) -> None:
            self.calls += 1
            if self.calls == 2:
                self.at = time.perf_counter()

        def end(self) -> None:
            pass

    ids = torch.tensor(prompts)
    streamer = FirstToken()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                             min_new_tokens=n_new, do_sample=False, pad_token_id=0, streamer=streamer)
    total = time.perf_counter() - t0
    return streamer.at - t0, total, out[:, ids.size(1):].tolist()


RUNNERS = {"hf": run_hf, "nocache": run_nocache}


# ----------------------------------------------------------------------------------------------


def summarise(runs: list[tuple[float, float]], batch: int, n_new: int) -> dict:
    best_ttft, best_total = min(runs, key=lambda r: r[1])
    decode = best_total - best_ttft
    return {
        "tok_s": batch * n_new / best_total,
        "tok_s_median": batch * n_new / statistics.median(r[1] for r in runs),
        "ttft_s": best_ttft,
        "decode_tok_s": batch * (n_new - 1) / decode if n_new > 1 else None,
        "decode_ms_per_step": 1e3 * decode / (n_new - 1) if n_new > 1 else None,
        "new_tokens": n_new,
        "repeats": len(runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--nocache-tokens", type=int, default=32,
                    help="new tokens for the no-cache path (quadratic; its tokens/s at this length)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help="comma list of engine, engine-transposed, engine-linear, engine-fp16, "
                         "engine-int8, engine-bf16, nocache, hf")
    add_smoke_flag(ap)
    args = ap.parse_args()
    shape = GPT2_SHAPE
    if args.smoke:
        args.prompt_tokens, args.new_tokens, args.nocache_tokens, args.repeats = 8, 4, 4, 1
        args.batch, shape = [1, 2], SMOKE_SHAPE
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    load_before = os.getloadavg()[0]
    models = build_models(variants, shape)
    gen = torch.Generator().manual_seed(0)
    results: dict[str, dict] = {}
    agreement: dict[str, float] = {}
    for batch in args.batch:
        prompts = torch.randint(0, shape["vocab_size"], (batch, args.prompt_tokens), generator=gen).tolist()
        timings: dict[str, list] = {v: [] for v in variants}
        tokens: dict[str, list] = {}
        for _ in range(args.repeats):
            for v in variants:  # interleaved: every system once per repeat
                n_new = args.nocache_tokens if v == "nocache" else args.new_tokens
                ttft, total, toks = RUNNERS.get(v, run_engine)(models[v], prompts, n_new)
                timings[v].append((ttft, total))
                tokens[v] = toks
                print(f"b{batch} {v:14s} ttft {ttft:7.3f}s  total {total:8.2f}s  "
                      f"{batch * n_new / total:7.2f} tok/s", flush=True)
        for v in variants:
            n_new = args.nocache_tokens if v == "nocache" else args.new_tokens
            results.setdefault(f"b{batch}", {})[v] = summarise(timings[v], batch, n_new)
        for v in tokens:  # greedy rows identical to HF's, per engine variant
            if v.startswith("engine") and "hf" in tokens:
                same = sum(a == b for a, b in zip(tokens[v], tokens["hf"], strict=True))
                agreement.setdefault(v, {})[f"b{batch}"] = same / batch
    out = {"bench": "generate", "threads": torch.get_num_threads(), "prompt_tokens": args.prompt_tokens,
           "new_tokens": args.new_tokens, "variants": variants, "results": results,
           "greedy_rows_identical_to_hf": agreement,  # per variant and batch
           "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "smoke": args.smoke}
    for batch in args.batch:
        r = results[f"b{batch}"]
        if "engine" in r and "hf" in r:
            out[f"b{batch}_vs_hf_ratio"] = r["engine"]["tok_s"] / r["hf"]["tok_s"]
    if "b1" in results:
        for v, r in results["b1"].items():
            if v.startswith("engine") and v != "engine-int8" and r["decode_ms_per_step"]:
                r["weight_gb_s"] = weight_bytes_per_step(models[v]) / (r["decode_ms_per_step"] / 1e3) / 1e9
    print_table(results)
    print(json.dumps(out))


def print_table(results: dict) -> None:
    print(f"\n{'':4s}{'system':16s}{'tok/s':>9s}{'median':>9s}{'TTFT s':>9s}{'decode tok/s':>14s}{'GB/s':>8s}")
    for batch, systems in results.items():
        for v, r in systems.items():
            gbs = f"{r['weight_gb_s']:8.1f}" if "weight_gb_s" in r else ""
            decode = f"{r['decode_tok_s']:14.2f}" if r["decode_tok_s"] else ""
            print(f"{batch:4s}{v:16s}{r['tok_s']:9.2f}{r['tok_s_median']:9.2f}{r['ttft_s']:9.3f}{decode}{gbs}")


if __name__ == "__main__":
    main()
