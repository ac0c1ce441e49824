"""Constrained decoding (lyre/constrain/, docs/structured.md): every sample of a tiny model at
temperature 1.0 matches its JSON schema / regex / choice list / Lark grammar, for each tokenizer
kind; constrained and free rows share a batch; fast-forward; finish reasons; bad constraints."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

from lyre.constrain import Constraint, ConstraintError, check_constraint  # noqa: E402
from lyre.core.errors import LyreError  # noqa: E402
from lyre.engine import Engine, SamplingConfig  # noqa: E402
from lyre.model.gpt import GPT, GPTConfig  # noqa: E402
from lyre.tokenizers import GPT2Tokenizer, build_tokenizer  # noqa: E402

GPT2_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2"

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "blue"]}, "minItems": 1, "maxItems": 3},
        "code": {"type": "string", "pattern": "^[a-z]{2}[0-9]{2}$"},
    },
    "required": ["name", "age", "tags", "code"],
    "additionalProperties": False,
}
REGEX = r"[a-z]{2,4}-[0-9]{2}"
CHOICES = ("yes", "no", "maybe not")
LARK = 'start: "call " (answer | tool)\nanswer: "hi"\ntool: "<tool>" %json{"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["x"], "additionalProperties": false} "</tool>"'

JSON_LINES = [json.dumps({"name": "ajax", "age": 31, "tags": ["red"], "code": "ab12"}),
              json.dumps({"x": 7}), "call <tool>{}</tool> call hi", "yes no maybe not", "ab-12 xyz-90"]


def valid(kind: str, text: str) -> bool:
    """Whether `text` is in the language of the test's constraint of this kind (Python's own
    parsers, not llguidance's)."""
    if kind == "json":
        try:
            jsonschema.validate(json.loads(text), SCHEMA)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True
    if kind == "regex":
        return re.fullmatch(REGEX, text) is not None
    if kind == "choice":
        return text in CHOICES
    if text == "call hi":
        return True
    m = re.fullmatch(r"call <tool>(.*)</tool>", text, re.S)
    if not m:
        return False
    try:
        value = json.loads(m.group(1))
    except ValueError:
        return False
    return isinstance(value, dict) and set(value) == {"x"} and isinstance(value["x"], int) and 0 <= value["x"] <= 99


CONSTRAINTS = {"json": Constraint.json(SCHEMA), "regex": Constraint.regex(REGEX),
               "choice": Constraint.choice(CHOICES), "lark": Constraint.grammar(LARK)}


def tiny_gpt(vocab_size: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))


@pytest.fixture(scope="module")
def char_run(tmp_path_factory, tiny_corpus):
    """A tiny trained char run whose corpus has the characters JSON needs (the Iliad has no
    digits or braces)."""
    from conftest import TINY_TOML

    from lyre.generate.runs import load_run
    from lyre.run.config import load_config
    from lyre.train.trainer import train

    root = tmp_path_factory.mktemp("constrain")
    corpus = root / "corpus.txt"
    corpus.write_text(tiny_corpus.read_text(encoding="utf-8")[:6000] + "\n".join(JSON_LINES * 20)
                      + "0123456789{}[]<>/_", encoding="utf-8")
    toml = root / "tiny.toml"
    toml.write_text(TINY_TOML.format(corpus=corpus.as_posix()), encoding="utf-8")
    run_dir = root / "run"
    train(load_config(toml, ["block_size=64", "train.max_iters=10"]), run_dir, progress=False, plot=False)
    return run_dir, load_run(run_dir, device="cpu")


@pytest.fixture(scope="module")
def engines(char_run):
    """One engine per tokenizer kind: the trained char run, untrained BPE and GPT-2 models."""
    out = {"char": Engine(char_run[1].model, char_run[1].tokenizer)}
    bpe = build_tokenizer("bpe:320", ["\n".join(JSON_LINES * 30) + " the quick brown fox"])
    out["bpe"] = Engine(tiny_gpt(bpe.vocab_size), bpe)
    if (GPT2_DIR / "encoder.json").is_file():
        gpt2 = GPT2Tokenizer(GPT2_DIR)
        out["gpt2"] = Engine(tiny_gpt(gpt2.vocab_size), gpt2)
    return out


@pytest.mark.parametrize("kind", ["json", "regex", "choice", "lark"])
@pytest.mark.parametrize("tok", ["char", "bpe", "gpt2"])
def test_every_sample_is_valid(engines, tok, kind):
    if tok not in engines:
        pytest.skip(f"GPT-2 tokenizer files not found in {GPT2_DIR}")
    params = SamplingConfig(max_new_tokens=120, temperature=1.0, top_k=0, num_samples=12, seed=7,
                            constraint=CONSTRAINTS[kind])
    completions = engines[tok].generate("a", params)
    bad = [c.text for c in completions if not valid(kind, c.text)]
    assert not bad, f"{tok} x {kind}: invalid samples {bad}"
    assert all(c.finish_reason == "stop" and not c.constraint_unfinished for c in completions)
    # Free sampling from the same model is (almost) never valid: the mask did the work.
    free = engines[tok].generate("a", SamplingConfig(max_new_tokens=40, temperature=1.0, num_samples=4, seed=7))
    if kind in ("json", "lark"):
        assert not any(valid(kind, c.text) for c in free)


def test_constrained_and_free_rows_share_a_batch(engines):
    engine = engines["bpe"]
    free = SamplingConfig(max_new_tokens=12, temperature=0.0)
    alone = engine.generate("a", free)[0]
    batch = engine.new_batch(4, max_length=100)
    rows = batch.add([engine.encode(t) for t in "aab"], [SamplingConfig(max_new_tokens=90, temperature=1.0, seed=1,
                                                      constraint=CONSTRAINTS["json"]),
                                       free, SamplingConfig(max_new_tokens=30, temperature=1.0, seed=2,
                                                            constraint=CONSTRAINTS["choice"])])
    late = None
    while len(batch):
        batch.step()
        if late is None and batch.free:  # continuous batching: a constrained row joins mid-way
            (late,) = batch.add([engine.encode("c")], SamplingConfig(max_new_tokens=40, temperature=1.0, seed=3,
                                                      constraint=CONSTRAINTS["regex"]))
    json_row, free_row, choice_row = rows
    assert valid("json", json_row.completion().text)
    assert valid("choice", choice_row.completion().text)
    assert valid("regex", late.completion().text)
    assert free_row.completion().tokens == alone.tokens  # the masks never touch a free row


def test_fast_forward_counts_forced_tokens(engines):
    for tok, engine in engines.items():
        (c,) = engine.generate("a", SamplingConfig(max_new_tokens=50, temperature=1.0, seed=0,
                                                   constraint=Constraint.choice(["all forced here"])))
        assert c.text == "all forced here" and c.finish_reason == "stop"
        assert c.forced_tokens == len(c.tokens) > 0, tok  # one option: nothing was sampled
        (c,) = engine.generate("a", SamplingConfig(max_new_tokens=120, temperature=1.0, seed=0,
                                                   constraint=CONSTRAINTS["json"]))
        assert 0 < c.forced_tokens < len(c.tokens), tok  # keys are forced, values sampled


def count_forwards(model) -> list[int]:
    calls: list[int] = []
    model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[1]))
    return calls


def test_jump_forward_feeds_forced_tokens_in_one_forward(engines):
    """Forced tokens are taken at once and fed together in the next step's forward: a grammar
    with one option needs only the prompt's forward, a schema fewer forwards than tokens."""
    for tok, engine in engines.items():
        model = copy.deepcopy(engine.model)
        calls = count_forwards(model)
        jumping = Engine(model, engine.tokenizer)
        (c,) = jumping.generate("a", SamplingConfig(max_new_tokens=50, temperature=0.0,
                                                    constraint=Constraint.choice(["all forced here"])))
        assert c.text == "all forced here" and len(calls) == 1, tok
        calls.clear()
        (c,) = jumping.generate("a", SamplingConfig(max_new_tokens=120, temperature=1.0, seed=0,
                                                    constraint=CONSTRAINTS["json"]))
        assert valid("json", c.text) and len(calls) < len(c.tokens), tok
        assert max(calls[1:]) > 1, tok  # some step fed several tokens


@pytest.mark.parametrize("tok", ["char", "bpe", "gpt2"])
def test_jump_forward_writes_what_one_token_per_step_writes(engines, tok):
    """A row that reports logprobs takes forced tokens one per step (each needs its logits):
    the same tokens either way (forced tokens draw no random number), beside free rows."""
    if tok not in engines:
        pytest.skip(f"GPT-2 tokenizer files not found in {GPT2_DIR}")
    engine = engines[tok]
    prompts = ["a", "ab", "b"]
    for kind in ("json", "lark"):
        one = SamplingConfig(max_new_tokens=100, temperature=1.0, seed=5, constraint=CONSTRAINTS[kind],
                             logprobs=True)
        jump = SamplingConfig(max_new_tokens=100, temperature=1.0, seed=5, constraint=CONSTRAINTS[kind])
        free = SamplingConfig(max_new_tokens=20, temperature=0.0)
        stepwise = engine.generate(prompts, [one, free, one])
        jumped = engine.generate(prompts, [jump, free, jump])
        assert [c.tokens for c in jumped] == [c.tokens for c in stepwise], kind
        assert all(valid(kind, c.text) for c in jumped[::2]), kind


def test_extend_view_matches_a_forward_without_cache():
    """Rows of different lengths each feeding a different number of tokens in one forward get
    the logits a plain forward over the whole sequence gives."""
    from lyre.engine.cache import ExtendView, PrefillView
    from lyre.model.gpt import KVCache

    model = tiny_gpt(50).eval()
    seqs = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 8, 7, 6, 5]]
    cached, fed = [5, 4], [3, 1]  # row 0: 5 cached + 3 fed at once; row 1: 4 cached + 1 fed
    cache = KVCache(model.config, 2, 16)
    with torch.inference_mode():
        for slot, (seq, n) in enumerate(zip(seqs, cached, strict=True)):
            model(torch.tensor([seq[:n]]), cache=PrefillView(cache, [slot], None))
        ids = torch.tensor([seqs[0][5:8], seqs[1][4:5] + [0, 0]])
        logits, _ = model(ids, cache=ExtendView(cache, cached, fed, torch.device("cpu")))
        for i, seq in enumerate(seqs):
            full, _ = model(torch.tensor([seq]))
            torch.testing.assert_close(logits[i, 0], full[0, -1], atol=1e-5, rtol=1e-5)


def test_unfinishable_grammar_ends_with_length(engines):
    for engine in engines.values():
        (c,) = engine.generate("a", SamplingConfig(max_new_tokens=5, temperature=1.0, seed=0,
                                                   constraint=Constraint.regex("[a-z]{30}")))
        assert c.finish_reason == "length" and c.constraint_unfinished
        assert len(c.tokens) == 5 and re.fullmatch("[a-z]+", c.text)
    # A grammar complete before max_new_tokens ends with "stop", not with more text.
    (c,) = engines["char"].generate("a", SamplingConfig(max_new_tokens=50, constraint=Constraint.regex("ab")))
    assert (c.text, c.finish_reason, c.constraint_unfinished) == ("ab", "stop", False)


@pytest.mark.parametrize("constraint, param, words", [
    (Constraint.json({"type": "objectx"}), "response_format", "invalid JSON schema"),
    (Constraint.json({"type": "string", "pattern": "(("}), "response_format", "invalid JSON schema"),
    (Constraint.json({"type": "integer", "minimum": 5, "maximum": 1}), "response_format", ""),
    (Constraint.regex("[a-"), "regex", "invalid regex"),
    (Constraint.grammar("start: missing_rule"), "grammar", "invalid Lark grammar"),
    (Constraint.grammar("root ::= ("  , "gbnf"), "grammar", "GBNF"),
    (Constraint.choice(["\u00e9t\u00e9"]), "choice", "accepts no text"),  # not in the char vocabulary
    (Constraint.regex("a" * 300_000), "regex", "longer than"),
])
def test_bad_constraints_raise_one_line_errors(engines, constraint, param, words):
    engine = engines["char"]
    with pytest.raises(ConstraintError) as e:
        engine.generate("a", SamplingConfig(constraint=constraint))
    assert e.value.param == param and words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConstraintError):
        check_constraint(constraint, engine.tokenizer)


def test_json_on_a_vocabulary_without_braces_is_refused(trained_run):
    """The Iliad has no '{': JSON cannot start. llguidance's first mask still lets a token through
    (the matcher then refuses it), so the check tries the allowed tokens: an error before any
    output, never a reply that breaks its schema."""
    from lyre.generate.runs import load_run

    run = load_run(trained_run, device="cpu")
    assert "{" not in "".join(run.tokenizer.decode([i]) for i in range(run.tokenizer.vocab_size))
    with pytest.raises(ConstraintError, match="accepts no text") as e:
        check_constraint(Constraint.json({"type": "object"}), run.tokenizer)
    assert e.value.param == "response_format"
    check_constraint(Constraint.regex("[a-z]+"), run.tokenizer)  # what it can write compiles


def test_constraint_values_are_checked():
    with pytest.raises(LyreError):
        SamplingConfig(constraint="json").validate()
    for bad in (lambda: Constraint.choice([]), lambda: Constraint.choice("ab"),
                lambda: Constraint.regex(""), lambda: Constraint.grammar("x", "ebnf"),
                lambda: Constraint("yaml", "x")):
        with pytest.raises(ConstraintError):
            bad()
    # Equal constraints are one cache entry (a schema dict is keyed by its JSON).
    assert Constraint.json({"a": 1, "b": 2}) == Constraint.json({"b": 2, "a": 1})
    assert len({Constraint.json(None), Constraint.json({}), Constraint.json({"type": "object"})}) == 2


def test_json_object_mode_and_compile_cache(engines):
    from lyre.constrain.compile import compile_constraint

    engine = engines["gpt2"] if "gpt2" in engines else engines["bpe"]
    first = compile_constraint(Constraint.json(), engine.tokenizer)
    assert compile_constraint(Constraint.json({}), engine.tokenizer) is first  # {} and None: json_object
    assert compile_constraint(Constraint.json(), engine.tokenizer) is first  # cached
    for c in engine.generate("a", SamplingConfig(max_new_tokens=200, temperature=0.7, num_samples=4,
                                                 seed=3, constraint=Constraint.json())):
        if not c.constraint_unfinished:
            assert isinstance(json.loads(c.text), dict)


def test_generate_and_the_cli_agree(char_run, tmp_path, capsys):
    from lyre.cli import main
    from lyre.generate import generate

    run_dir, run = char_run
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA), encoding="utf-8")
    cfg = SamplingConfig(max_new_tokens=100, temperature=0.0, seed=1)
    text = generate(run.model, run.tokenizer, "a", cfg, constraint=Constraint.json(SCHEMA))
    assert valid("json", text)
    assert main(["sample", str(run_dir), "--prompt", "a", "--json-schema", str(schema_file),
                 "--temperature", "0", "--seed", "1", "--max-new-tokens", "100", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == "a" + text + "\n"
    assert main(["chat", str(run_dir), "-p", "hi", "--choice", "yes,no", "--device", "cpu",
                 "--history", ""]) == 0
    assert capsys.readouterr().out.strip() in ("yes", "no")


def test_the_server_writes_what_generate_writes(char_run):
    """The one engine behind every door: greedy constrained completions over HTTP (vLLM's
    `structured_outputs`) are the texts generate() gives for the same prompt and constraint.
    (Short constraints: the server stops at the context, generate() slides by default.)"""
    import httpx

    from lyre.generate import generate
    from lyre.serve.server import start_background
    from lyre.serve.settings import ServeSettings

    _, run = char_run
    cases = [({"regex": "[a-z]{3} [0-9]{2}"}, Constraint.regex("[a-z]{3} [0-9]{2}")),
             ({"choice": ["red", "green"]}, Constraint.choice(["red", "green"])),
             ({"json": {"type": "object", "properties": {"age": {"type": "integer", "maximum": 99}},
                        "required": ["age"], "additionalProperties": False}},
              Constraint.json({"type": "object", "properties": {"age": {"type": "integer", "maximum": 99}},
                               "required": ["age"], "additionalProperties": False}))]
    cfg = SamplingConfig(max_new_tokens=40, temperature=0.0)
    with start_background(run, ServeSettings(model_name="tiny")) as srv:
        for extra, constraint in cases:
            text = generate(run.model, run.tokenizer, "a", cfg, constraint=constraint)
            r = httpx.post(srv.url + "/v1/completions", timeout=120, json={
                "model": "tiny", "prompt": "a", "max_tokens": 40, "temperature": 0,
                "structured_outputs": extra})
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            assert choice["text"] == text and choice["finish_reason"] == "stop", (extra, text)


@pytest.mark.parametrize("flags, message", [
    (["--json-schema", "missing.json"], "not found"),
    (["--json-schema", "bad.json"], "not valid JSON"),
    (["--json-schema", "schema_bad.json"], "invalid JSON schema"),
    (["--grammar", "g.gbnf"], "GBNF"),
    (["--regex", "(("], "invalid regex"),
])
def test_cli_bad_constraints_exit_2(char_run, tmp_path, capsys, monkeypatch, flags, message):
    from lyre.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "schema_bad.json").write_text('{"type": 12}', encoding="utf-8")
    (tmp_path / "g.gbnf").write_text('root ::= "a" (', encoding="utf-8")
    assert main(["sample", str(char_run[0]), "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_constraint_flags_are_mutually_exclusive(char_run, capsys):
    from lyre.cli import main

    with pytest.raises(SystemExit) as e:
        main(["sample", str(char_run[0]), "--regex", "a", "--choice", "a,b"])
    assert e.value.code == 2


def test_gbnf_grammar(engines):
    gbnf = 'root ::= "say " answer\nanswer ::= "yes" | "no"'
    for engine in engines.values():
        completions = engine.generate("a", SamplingConfig(max_new_tokens=20, temperature=1.0, num_samples=4, seed=1,
                                                          constraint=Constraint.grammar(gbnf, "gbnf")))
        assert {c.text for c in completions} <= {"say yes", "say no"}


def test_special_tokens_are_never_spelled_by_a_grammar(engines):
    """A grammar asking for the text "<|endoftext|>" gets it as ordinary tokens: the special
    token (which would end the row) is allowed only where the grammar may end."""
    for tok in ("bpe", "gpt2"):
        if tok not in engines:
            continue
        engine = engines[tok]
        (c,) = engine.generate("a", SamplingConfig(max_new_tokens=40, temperature=1.0, seed=0,
                                                   constraint=Constraint.choice(["<|endoftext|> done"])))
        assert c.text == "<|endoftext|> done" and c.finish_reason == "stop"
        assert engine.tokenizer.eot_id not in c.tokens


def test_model_vocabulary_padded_past_the_tokenizer(engines):
    """A model whose vocabulary is padded (GPT-2's 50,304) never gets ids the tokenizer lacks."""
    tok = engines["bpe"].tokenizer
    engine = Engine(tiny_gpt(tok.vocab_size + 13), tok)
    completions = engine.generate("a", SamplingConfig(max_new_tokens=60, temperature=1.0, num_samples=6, seed=2,
                                                      constraint=CONSTRAINTS["regex"]))
    assert all(valid("regex", c.text) and max(c.tokens) < tok.vocab_size for c in completions)
