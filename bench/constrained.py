"""Constrained decoding (docs/structured.md): validity, cost, and outlines side by side.

    python bench/constrained.py [--run RUN_DIR] [--iters N] [--threads T] [--smoke]

Validity: 5 JSON schemas (nested objects, enums, arrays with minItems/maxItems, integer ranges,
string patterns) x --samples samples at temperature 1.0, constrained vs the same sampling
unconstrained (stopped at a newline), from the demo model (a char model of the iliad-char shape,
trained here for --iters steps on the Iliad plus example JSON lines unless --run is given) and a
BPE model of the same shape and corpus. Valid = json.loads + jsonschema.validate.
Cost: constrained tokens/s / unconstrained tokens/s at batch 1 and 8 (`constraint_overhead_ratio`,
goal >= 0.9) for the demo shape and a GPT-2 124M shape (random weights, GPT-2's tokenizer from
/work/shared/data/gpt2 or --gpt2).
Peer: that GPT-2-shaped model exported with `lyre export-hf` and run by outlines (+ transformers)
on the same schema, batch 1: lyre tokens/s / outlines tokens/s = `outlines_speed_ratio`.
--smoke: untrained tiny models, 4 samples, a 2-layer GPT-2-shaped model (figures mean nothing).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import add_smoke_flag, json_line, machine

from lyre.constrain import Constraint
from lyre.engine import Engine, SamplingConfig
from lyre.model import GPT, GPTConfig
from lyre.run.config import BUNDLED_ILIAD
from lyre.tokenizers import build_tokenizer

GPT2_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2"

SCHEMAS = {
    "nested": {"type": "object", "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "home": {"type": "object", "properties": {
            "city": {"type": "string", "minLength": 1, "maxLength": 10},
            "ships": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["city", "ships"], "additionalProperties": False}},
        "required": ["name", "home"], "additionalProperties": False},
    "enums": {"type": "object", "properties": {
        "side": {"enum": ["achaean", "trojan", "god"]},
        "mood": {"type": "string", "enum": ["wrath", "grief", "joy"]}},
        "required": ["side", "mood"], "additionalProperties": False},
    "array": {"type": "object", "properties": {
        "gifts": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 6},
                  "minItems": 2, "maxItems": 4}},
        "required": ["gifts"], "additionalProperties": False},
    "ranges": {"type": "object", "properties": {
        "day": {"type": "integer", "minimum": 1, "maximum": 31},
        "slain": {"type": "integer", "minimum": -5, "maximum": 500}},
        "required": ["day", "slain"], "additionalProperties": False},
    "patterns": {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
        "tag": {"type": "string", "pattern": "^[a-z]{2,5}$"}},
        "required": ["code", "tag"], "additionalProperties": False},
}
COST_SCHEMA = "nested"


def example(name: str, rng: random.Random) -> dict:
    """A random instance of SCHEMAS[name]: the training lines that teach the models JSON."""
    word = lambda n: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, n)))  # noqa: E731
    if name == "nested":
        return {"name": word(10).title(), "home": {"city": word(10).title(), "ships": rng.randint(0, 99)}}
    if name == "enums":
        return {"side": rng.choice(["achaean", "trojan", "god"]), "mood": rng.choice(["wrath", "grief", "joy"])}
    if name == "array":
        return {"gifts": [word(6) for _ in range(rng.randint(2, 4))]}
    if name == "ranges":
        return {"day": rng.randint(1, 31), "slain": rng.randint(-5, 500)}
    code = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(3)) + f"-{rng.randint(0, 999):03d}"
    return {"code": code, "tag": word(5) if len(word(5)) >= 2 else "ab"}


def corpus_text(chars: int, lines: int) -> str:
    """The Iliad's start plus `lines` JSON lines of every schema, interleaved by paragraph."""
    rng = random.Random(0)
    iliad = BUNDLED_ILIAD.read_text(encoding="utf-8")
    iliad = iliad[iliad.index("Sing, O goddess"):][:chars].split("\n\n")
    out = []
    for i in range(lines):
        if i < len(iliad):
            out.append(iliad[i])
        out.append(json.dumps(example(list(SCHEMAS)[i % len(SCHEMAS)], rng)))
    return "\n".join(out) + "\n0123456789{}[]-_\n"


def is_valid(text: str, schema: dict) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


# ---- models ----------------------------------------------------------------------------------


def train_run(tmp: Path, name: str, tokenizer: str, model_toml: str, corpus: str, iters: int,
              batch_size: int = 12) -> Path:
    from lyre.run.config import load_config
    from lyre.train.trainer import train

    corpus_file = tmp / f"{name}.txt"
    corpus_file.write_text(corpus, encoding="utf-8")
    toml = tmp / f"{name}.toml"
    toml.write_text(f"{model_toml}\n[data]\ncorpus = [{json.dumps(corpus_file.as_posix())}]\n"
                    f"tokenizer = {json.dumps(tokenizer)}\n[train]\nbatch_size = {batch_size}\nmax_iters = {iters}\n"
                    f"lr = 2e-3\nmin_lr = 0.0\nwarmup_iters = {min(50, iters // 4)}\neval_interval = {iters}\n"
                    "eval_windows = 8\ndevice = \"cpu\"\nthreads = 1\n", encoding="utf-8")
    run_dir = tmp / name
    with contextlib.redirect_stdout(sys.stderr):  # the training log; stdout ends with the JSON line
        train(load_config(toml), run_dir, progress=False, plot=False)
    return run_dir


DEMO_MODEL = """[model]
n_layer = 2
n_head = 6
n_embd = 192
block_size = 256
mlp_ratio = 3.0
dropout = 0.0
bias = false
pos = "rope"
norm = "rmsnorm"
act = "relu2"
tie_embeddings = true
"""
GPT2_MODEL = """[model]
n_layer = {n_layer}
n_head = {n_head}
n_embd = {n_embd}
block_size = 256
dropout = 0.0
bias = true
pos = "learned"
norm = "layernorm"
act = "gelu"
"""


def load_engine(run_dir: Path) -> Engine:
    from lyre.generate.runs import load_run

    run = load_run(run_dir, device="cpu")
    return Engine(run.model, run.tokenizer)


def smoke_engine(tokenizer) -> Engine:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=256, n_layer=1, n_head=2, n_embd=32))
    return Engine(model.eval(), tokenizer)


# ---- measurements ----------------------------------------------------------------------------


def validity(engine: Engine, samples: int, max_new: int) -> dict:
    """Valid rate per schema, constrained and free, at temperature 1.0."""
    out = {}
    prompt = engine.encode("\n")
    for name, schema in SCHEMAS.items():
        base = dict(max_new_tokens=max_new, temperature=1.0, num_samples=samples, seed=1)
        con = engine.generate([prompt], SamplingConfig(**base, constraint=Constraint.json(schema)))
        free = engine.generate([prompt], SamplingConfig(**base, stop=["\n"]))
        out[name] = {"constrained": sum(is_valid(c.text, schema) for c in con) / samples,
                     "unconstrained": sum(is_valid(c.text, schema) for c in free) / samples,
                     "constrained_unfinished": sum(c.constraint_unfinished for c in con)}
    return out


def timed_generate(engine: Engine, params: list[SamplingConfig], forced: list | None = None) -> tuple[float, list[int]]:
    """tokens/s of one row per config (all from the same prompt, one batch); each row's length.
    `forced` collects (forced tokens, tokens) per row."""
    prompt = engine.encode("\n")
    t0 = time.perf_counter()
    done = engine.generate([prompt] * len(params), params, max_batch=len(params))
    seconds = time.perf_counter() - t0
    lengths = [len(c.tokens) for c in done]
    if forced is not None:
        forced += [(c.forced_tokens, len(c.tokens)) for c in done]
    return sum(lengths) / seconds, lengths


def overhead_at(engine: Engine, batch: int, constraint: Constraint, max_new: int, repeats: int) -> dict:
    """Constrained rows, then free rows of exactly the same lengths (so the batch shrinks the
    same way as rows finish): the difference is the cost of the masks, nothing else."""
    def constrained(seed: int) -> list[SamplingConfig]:
        return [SamplingConfig(max_new_tokens=max_new, temperature=1.0, seed=seed + i, constraint=constraint)
                for i in range(batch)]

    timed_generate(engine, constrained(0))  # warm-up (and compile the constraint: cached from here)
    con_best = free_best = 0.0
    forced: list[tuple[int, int]] = []
    for r in range(repeats):
        con, lengths = timed_generate(engine, constrained(100 * (r + 1)), forced)
        free, _ = timed_generate(engine, [SamplingConfig(max_new_tokens=max(1, n), temperature=1.0, seed=i,
                                                         stop_token_ids=[]) for i, n in enumerate(lengths)])
        con_best, free_best = max(con_best, con), max(free_best, free)
    # Forced tokens are fed several at once (jump-forward): what makes constrained rows faster.
    return {"constrained_tok_s": round(con_best, 1), "unconstrained_tok_s": round(free_best, 1),
            "forced_fraction": round(sum(f for f, _ in forced) / max(1, sum(n for _, n in forced)), 3),
            "constraint_overhead_ratio": round(con_best / free_best, 3)}


def overhead(engine: Engine, repeats: int, max_new: int) -> dict:
    """constrained tok/s / unconstrained tok/s, batch 1 and 8, on the COST_SCHEMA."""
    constraint = Constraint.json(SCHEMAS[COST_SCHEMA])
    return {f"batch{b}": overhead_at(engine, b, constraint, max_new, repeats) for b in (1, 8)}


def outlines_peer(run_dir: Path, engine: Engine, tmp: Path, max_new: int, repeats: int) -> dict:
    """The same model exported to Hugging Face format, generated by outlines (its default JSON
    backend, outlines_core, on transformers) on the same schema at temperature 1.0, batch 1 and
    8, against lyre's constrained tokens/s at the same batch."""
    try:
        import outlines
        from outlines.types import JsonSchema
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        return {"outlines_skipped": f"outlines/transformers not installed ({e})"}
    from lyre.hf import export_hf

    hf_dir = export_hf(run_dir, tmp / "hf", force=True)
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    if hf_tok.pad_token is None:  # batched generation pads the prompts
        hf_tok.pad_token = hf_tok.eos_token
    model = outlines.from_transformers(hf_model, hf_tok)
    schema = SCHEMAS[COST_SCHEMA]
    t0 = time.perf_counter()
    # No free whitespace, as lyre compiles JSON (compact, one space after "," and ":").
    generator = outlines.Generator(model, JsonSchema(json.dumps(schema), whitespace_pattern=" ?"))
    out: dict = {"outlines_compile_s": round(time.perf_counter() - t0, 2)}
    constraint = Constraint.json(schema)
    for batch in (1, 8):
        best = ours = 0.0
        texts: list[str] = []
        # Alternate the two within each repeat, so that a burst of load on this shared machine
        # slows both sides rather than one; the best of the repeats is kept for each.
        for r in range(repeats + 1):  # the first round warms up
            torch.manual_seed(r)
            t0 = time.perf_counter()
            result = generator.batch(["\n"] * batch, max_new_tokens=max_new, do_sample=True, temperature=1.0)
            seconds = time.perf_counter() - t0
            params = [SamplingConfig(max_new_tokens=max_new, temperature=1.0, seed=10 * r + i, constraint=constraint)
                      for i in range(batch)]
            lyre_tok_s = timed_generate(engine, params)[0]
            if r:
                tokens = sum(len(hf_tok(text)["input_ids"]) for text in result)
                best, ours = max(best, tokens / seconds), max(ours, lyre_tok_s)
                texts += result
        out[f"batch{batch}"] = {"outlines_tok_s": round(best, 1), "lyre_tok_s": round(ours, 1),
                                "outlines_valid_rate": sum(is_valid(t, schema) for t in texts) / len(texts),
                                "outlines_speed_ratio": round(ours / best, 3)}
    out["outlines_sample"] = texts[0][:100]
    out["outlines_speed_ratio"] = out["batch1"]["outlines_speed_ratio"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=None, help="the demo char run (default: train one here)")
    ap.add_argument("--iters", type=int, default=600, help="training steps of the demo and BPE models")
    ap.add_argument("--samples", type=int, default=40, help="samples per schema (default 40)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs, best kept (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--gpt2", type=Path, default=GPT2_DIR, help="GPT-2 tokenizer files (encoder.json, vocab.bpe)")
    add_smoke_flag(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    samples, repeats, max_new = (2, 1, 100) if args.smoke else (args.samples, args.repeats, 120)
    record: dict = {"bench": "constrained", "smoke": args.smoke, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="lyre-bench-constrained-") as tmp_name:
        tmp = Path(tmp_name)
        corpus = corpus_text(2_000 if args.smoke else 60_000, 40 if args.smoke else 3000)
        t0 = time.perf_counter()
        if args.smoke:
            char = smoke_engine(build_tokenizer("char", [corpus]))
            bpe = smoke_engine(build_tokenizer("bpe:300", [corpus]))
        else:
            char_run = args.run or train_run(tmp, "demo-char", "char", DEMO_MODEL, corpus, args.iters)
            char = load_engine(char_run)
            bpe = load_engine(train_run(tmp, "demo-bpe", "bpe:512", DEMO_MODEL, corpus, args.iters))
        record["train_s"] = round(time.perf_counter() - t0, 1)
        record["validity"] = {"demo_char": validity(char, samples, max_new),
                              "bpe": validity(bpe, samples, max_new)}
        for model_name, v in record["validity"].items():
            record[f"{model_name}_constrained_valid_rate"] = sum(s["constrained"] for s in v.values()) / len(v)
            record[f"{model_name}_unconstrained_valid_rate"] = sum(s["unconstrained"] for s in v.values()) / len(v)
        record["cost"] = {"demo_char": overhead(char, repeats, max_new)}
        if (args.gpt2 / "encoder.json").is_file():
            shape = dict(n_layer=2, n_head=2, n_embd=64) if args.smoke else dict(n_layer=12, n_head=12, n_embd=768)
            gpt2_run = train_run(tmp, "gpt2-shape", f"gpt2:{args.gpt2}", GPT2_MODEL.format(**shape),
                                 corpus_text(60_000, 100), 1, batch_size=1)  # random weights, a run to export
            gpt2 = load_engine(gpt2_run)
            record["cost"]["gpt2_124m_shape" if not args.smoke else "gpt2_tiny_shape"] = overhead(gpt2, repeats, 60)
            record["peer"] = outlines_peer(gpt2_run, gpt2, tmp, 60, repeats)
        else:
            record["peer"] = {"outlines_skipped": f"GPT-2 tokenizer files not found in {args.gpt2}"}
    ratios = [c[b]["constraint_overhead_ratio"] for c in record["cost"].values() for b in c]
    record["constraint_overhead_ratio"] = min(ratios)  # the worst case of every shape and batch
    record["outlines_speed_ratio"] = record["peer"].get("outlines_speed_ratio")
    print(json.dumps(record, indent=1), file=sys.stderr)
    json_line(record)


if __name__ == "__main__":
    main()
