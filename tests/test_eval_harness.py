"""The evaluation harness (lyre/eval/harness): task files, lm-eval's scoring, parity with the real
lm-eval package on the same model exported with export_hf, converters, exact match, the CLI."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lyre.cli import main
from lyre.core.errors import LyreError
from lyre.eval.harness import (
    TaskResult,
    convert,
    core_score,
    evaluate_task,
    lm_eval_task_yaml,
    load_task,
    write_task,
)
from lyre.eval.harness.score import encode_pair
from lyre.eval.harness.tasks import fewshot_context
from lyre.generate.runs import LoadedRun, load_run


def make_task(path: Path, words: list[str], n: int = 30, seed: int = 0) -> Path:
    """n multiple-choice lines of Iliad words: contexts of 3..24 words, 2..5 choices of 1..5."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a = rng.randrange(len(words) - 30)
        k = rng.randrange(2, 6)
        choices = [" ".join(words[b : b + rng.randrange(1, 6)]) for b in
                   (rng.randrange(len(words) - 6) for _ in range(k))]
        lines.append({"context": " ".join(words[a : a + rng.randrange(3, 25)]), "choices": choices,
                      "gold": rng.randrange(k)})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, tiny_config) -> Path:
    """A tiny GPT-2-shaped run (learned positions, LayerNorm, GELU, biases) with a byte-level BPE
    tokenizer and a context of 48 tokens, so that some examples are left-truncated."""
    from lyre.train.trainer import train

    run_dir = tmp_path_factory.mktemp("harness") / "run"
    config = tiny_config("pos=learned", "norm=layernorm", "act=gelu", "bias=true", "block_size=48",
                         "data.tokenizer='bpe:300'", "train.max_iters=20", "train.eval_interval=20",
                         "train.final_eval=false")
    train(config, run_dir, progress=False, plot=False)
    return run_dir


@pytest.fixture(scope="module")
def loaded(gpt2_run) -> LoadedRun:
    return load_run(gpt2_run, device="cpu")


@pytest.fixture(scope="module")
def task_file(tmp_path_factory, tiny_corpus) -> Path:
    words = tiny_corpus.read_text(encoding="utf-8").split()
    return make_task(tmp_path_factory.mktemp("task") / "iliad_mc.jsonl", words)


# ---- parity with lm-eval-harness ------------------------------------------------------------


def run_lm_eval(hf_dir: Path, task: Path, work: Path, batch_size: int = 8) -> dict:
    """lm-eval's own scores on a local task file: its HF model, a task YAML over the JSONL."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[dev]')")
    from lm_eval.tasks import TaskManager

    yaml_dir = work / "yaml"
    yaml_dir.mkdir(exist_ok=True)
    name = "lyre_" + task.stem
    (yaml_dir / f"{name}.yaml").write_text(lm_eval_task_yaml(name, task), encoding="utf-8")
    res = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={hf_dir},tokenizer={hf_dir},dtype=float32",
        tasks=[name], task_manager=TaskManager(include_path=str(yaml_dir)), batch_size=batch_size,
        device="cpu", log_samples=True,
    )
    return {"results": res["results"][name],
            "samples": sorted(res["samples"][name], key=lambda s: s["doc_id"])}


@pytest.fixture(scope="module")
def offline_hf(tmp_path_factory):
    """Nothing downloads: Hugging Face datasets and hub offline, their caches in a temp dir."""
    saved = dict(os.environ)
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                      HF_HOME=str(tmp_path_factory.mktemp("hf_home")))
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_acc_and_acc_norm_equal_lm_eval_to_the_last_example(tmp_path, gpt2_run, loaded, task_file, offline_hf):
    from lyre.hf import export_hf

    hf_dir = export_hf(gpt2_run, tmp_path / "hf")
    theirs = run_lm_eval(hf_dir, task_file, tmp_path)
    ours = evaluate_task(loaded, task_file, batch_size=8)
    assert ours.n == len(theirs["samples"]) == 30
    assert ours.acc == pytest.approx(theirs["results"]["acc,none"], abs=1e-12)
    assert ours.acc_norm == pytest.approx(theirs["results"]["acc_norm,none"], abs=1e-12)
    examples = load_task(task_file).examples
    for sample, pick, pick_norm, example in zip(theirs["samples"], ours.predictions, ours.predictions_norm,
                                                examples, strict=True):
        lls = np.array([float(r[0]) for r in sample["filtered_resps"]])
        chars = np.array([len(c) for c in example.choices], dtype=float)
        assert int(np.argmax(lls)) == pick, sample["doc_id"]
        assert int(np.argmax(lls / chars)) == pick_norm, sample["doc_id"]
        assert sample["acc"] == float(pick == example.gold)
        assert sample["acc_norm"] == float(pick_norm == example.gold)
    # The log-likelihoods themselves agree (float32, two implementations of one forward pass).
    requests = [encode_pair(loaded.tokenizer, e.context, " " + c) for e in examples for c in e.choices]
    from lyre.eval.harness.score import loglikelihoods

    mine = [s for s, _ in loglikelihoods(loaded.model, requests, batch_size=5)]
    theirs_ll = [float(r[0]) for s in theirs["samples"] for r in s["filtered_resps"]]
    assert np.allclose(mine, theirs_ll, atol=1e-4)


# ---- scoring -----------------------------------------------------------------------------------


def test_scores_do_not_depend_on_the_batch_size(loaded, task_file):
    one = evaluate_task(loaded, task_file, batch_size=1)
    many = evaluate_task(loaded, task_file, batch_size=7)
    assert (one.predictions, one.predictions_norm, one.acc) == (many.predictions, many.predictions_norm, many.acc)
    assert 0.0 <= one.acc <= 1.0 and one.n == 30


def test_encode_pair_splits_the_whole_encoding_and_moves_trailing_spaces(loaded):
    tok = loaded.tokenizer
    r = encode_pair(tok, "Sing, O goddess ", "the anger")
    assert list(r.context) == tok.encode("Sing, O goddess")
    assert list(r.context + r.continuation) == tok.encode("Sing, O goddess the anger")
    empty = encode_pair(tok, "", " wrath")
    assert empty.context == (tok.eot_id,) and list(empty.continuation) == tok.encode(" wrath")


def test_centered_accuracy_and_core(loaded, task_file):
    r = evaluate_task(loaded, task_file, limit=10)
    examples = load_task(task_file).examples[:10]
    baseline = np.mean([1 / len(e.choices) for e in examples])
    assert r.n == 10 and r.random_baseline == pytest.approx(baseline)
    assert r.acc_centered == pytest.approx((r.acc - baseline) / (1 - baseline))
    other = TaskResult(task="x", kind="generate", n=1, shots=0, acc=1.0, acc_centered=1.0)
    assert core_score([r, other]) == pytest.approx((r.acc_centered + 1.0) / 2)


def test_fewshot_contexts_are_seeded_and_never_show_the_scored_example(task_file):
    task = load_task(task_file)
    for i in range(len(task.examples)):
        ctx = fewshot_context(task, i, 3)
        assert ctx == fewshot_context(task, i, 3)
        parts = ctx.split("\n\n")
        assert len(parts) == 4 and parts[-1] == task.examples[i].context
        shown = {p for p in parts[:-1]}
        own = task.examples[i].context + " " + task.examples[i].target
        assert own not in shown
    with pytest.raises(LyreError, match="needs more than"):
        fewshot_context(task, 0, 30)


def test_shots_run_end_to_end(loaded, task_file):
    r = evaluate_task(loaded, task_file, shots=2, limit=5)
    assert r.shots == 2 and r.n == 5


# ---- exact match -------------------------------------------------------------------------------


def test_exact_match_uses_greedy_engine_output(tmp_path, loaded):
    from lyre.engine import Engine, SamplingConfig

    contexts = ["Sing, O goddess, the", "Achilles, son of", "the ships of the", "and the"]
    greedy = Engine(loaded.model, loaded.tokenizer).generate(
        contexts, SamplingConfig(max_new_tokens=8, temperature=0.0, stop=["\n\n"], seed=0))
    lines = [{"context": c, "answer": g.text.strip() if i % 2 == 0 else "not this"}
             for i, (c, g) in enumerate(zip(contexts, greedy, strict=True))]
    path = tmp_path / "gen.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    r = evaluate_task(loaded, path, max_new_tokens=8, batch_size=3)
    assert r.kind == "generate" and r.n == 4
    assert r.exact_match == r.acc == 0.5 == r.acc_centered


# ---- task files and their errors ---------------------------------------------------------------


@pytest.mark.parametrize("line, message", [
    ('{"context": "a", "choices": ["x", "y"], "gold": 2}', "2: gold 2 is out of range for 2 choices"),
    ('{"context": "a", "choices": ["x", "y"], "gold": -1}', "gold -1 is out of range"),
    ('{"context": "a", "choices": ["x", "y"], "gold": "0"}', "'gold' must be an integer"),
    ('{"context": "a", "choices": ["x"], "gold": 0}', "at least two strings"),
    ('{"choices": ["x", "y"], "gold": 0}', "'context' must be a string"),
    ('not json', "2: not JSON"),
    ('[1, 2]', "not a JSON object"),
    ('{"context": "a"}', "needs 'choices' and 'gold'"),
])
def test_bad_lines_are_refused_with_their_line_number(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": "a", "choices": ["x", "y"], "gold": 0}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(LyreError, match=message) as e:
        load_task(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    task = load_task(path, skip_bad=True)
    assert len(task.examples) == 1 and task.skipped == 1 and task.skip_reasons[0].startswith("2:")


def test_other_bad_task_files(tmp_path):
    with pytest.raises(LyreError, match="not found"):
        load_task(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(LyreError, match="no valid example"):
        load_task(tmp_path / "empty.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(LyreError, match="not UTF-8"):
        load_task(tmp_path / "bin.jsonl")
    (tmp_path / "mixed.jsonl").write_text('{"context": "a", "answer": "b"}\n'
                                          '{"context": "a", "choices": ["x", "y"], "gold": 1}\n')
    with pytest.raises(LyreError, match="mixes"):
        load_task(tmp_path / "mixed.jsonl")
    with pytest.raises(LyreError, match="neither a file nor a named task"):
        load_task("no_such_task_name")


def test_named_tasks_come_from_lyre_tasks(tmp_path, monkeypatch, task_file):
    monkeypatch.setenv("LYRE_TASKS", str(tmp_path))
    (tmp_path / "mine.jsonl").write_text(task_file.read_text(encoding="utf-8"), encoding="utf-8")
    task = load_task("mine")
    assert task.name == "mine" and len(task.examples) == 30


# ---- converters --------------------------------------------------------------------------------


def test_hellaswag_arc_and_mmlu_layouts_convert(tmp_path):
    hs = {"activity_label": "Baking cookies", "ctx_a": "A woman mixes flour.",
          "ctx_b": "then she", "endings": ["bakes [title] them.", "sings  loudly.", "c", "d"], "label": "1"}
    (tmp_path / "hs.jsonl").write_text(json.dumps(hs) + "\n")
    assert convert("hellaswag", tmp_path / "hs.jsonl") == [{
        "context": "Baking cookies: A woman mixes flour. Then she",
        "choices": ["bakes. them.", "sings loudly.", "c", "d"], "gold": 1}]
    arc_hf = {"question": "Which is a metal?", "choices": {"text": ["wood", "iron"], "label": ["A", "B"]},
              "answerKey": "B"}
    arc_ai2 = {"question": {"stem": "Which is a metal?", "choices": [{"text": "wood", "label": "1"},
                                                                     {"text": "iron", "label": "2"}]},
               "answerKey": "2"}
    (tmp_path / "arc.jsonl").write_text(json.dumps(arc_hf) + "\n" + json.dumps(arc_ai2) + "\n")
    expected = {"context": "Question: Which is a metal?\nAnswer:", "choices": ["wood", "iron"], "gold": 1}
    assert convert("arc", tmp_path / "arc.jsonl") == [expected, expected]
    mmlu = {"question": " 2 + 2 = ", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1}
    (tmp_path / "mmlu.jsonl").write_text(json.dumps(mmlu) + "\n" + json.dumps({**mmlu, "answer": "B"}) + "\n")
    out = convert("mmlu", tmp_path / "mmlu.jsonl")
    assert out[0] == out[1] == {"context": "2 + 2 =\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:",
                                "choices": ["A", "B", "C", "D"], "gold": 1}
    written = write_task(out, tmp_path / "tasks" / "m.jsonl")
    assert load_task(written).examples[0].choices == ("A", "B", "C", "D")
    task = load_task(tmp_path / "arc.jsonl", layout="arc")
    assert task.kind == "multiple_choice" and task.examples[1].gold == 1
    with pytest.raises(LyreError, match="not a arc line"):
        convert("arc", tmp_path / "hs.jsonl")
    with pytest.raises(LyreError, match="unknown task layout"):
        convert("piqa", tmp_path / "hs.jsonl")


# ---- the CLI and run kinds ---------------------------------------------------------------------


def test_cli_prints_one_json_object_per_task_and_core(gpt2_run, task_file, capsys):
    assert main(["eval", str(gpt2_run), "--task", str(task_file), "--task", str(task_file),
                 "--limit", "6", "--json", "--no-progress", "--device", "cpu"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    assert {"task", "n", "acc", "acc_norm", "acc_centered"} <= set(lines[0])
    assert lines[0]["n"] == 6 and lines[0]["task"] == "iliad_mc"
    assert lines[2]["core"] == pytest.approx(lines[0]["acc_centered"])
    assert main(["eval", str(gpt2_run), "--task", str(task_file), "--limit", "3", "--no-progress",
                 "--device", "cpu"]) == 0
    assert "acc_norm" in capsys.readouterr().out


def test_cli_bad_gold_is_one_line_and_exit_2(tmp_path, gpt2_run, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": "a", "choices": ["x", "y"], "gold": 5}\n', encoding="utf-8")
    assert main(["eval", str(gpt2_run), "--task", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lyre: error:") and "gold 5 is out of range" in err and "\n" not in err


def test_a_seq2seq_run_is_told_the_harness_does_not_apply(loaded, task_file):
    from lyre.model import Seq2SeqConfig, Seq2SeqTransformer

    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=16))
    run = LoadedRun(Path("seq2seq-run"), loaded.config, loaded.tokenizer, model, "best", torch.device("cpu"))
    with pytest.raises(LyreError, match="does not apply"):
        evaluate_task(run, task_file)


def test_context_run_once_equals_the_full_pass(loaded, task_file, monkeypatch):
    """The choices of an example share its context through a KV cache (score._score_shared); the
    plain padded full pass gives the same log-likelihoods."""
    from lyre.eval.harness import score

    examples = load_task(task_file).examples
    requests = [encode_pair(loaded.tokenizer, e.context, " " + c) for e in examples for c in e.choices]
    shared_groups = [g for ctx, g in score._by_context(requests).items()
                     if score._can_share(loaded.model, ctx, [requests[i] for i in g], 48)]
    assert shared_groups  # the fixture's task has examples that fit the context
    shared = score.loglikelihoods(loaded.model, requests, batch_size=4)
    monkeypatch.setattr(score, "_can_share", lambda *a: False)
    full = score.loglikelihoods(loaded.model, requests, batch_size=4)
    assert [t for _, t in shared] == [t for _, t in full]
    assert np.allclose([s for s, _ in shared], [s for s, _ in full], atol=1e-5)


def test_a_lora_fine_tuned_run_is_scored_with_its_adapters(tmp_path_factory, tmp_path):
    """Every decoder-only run kind loads through load_run (a LoRA run: base + adapters merged)."""
    from finetune_util import base_run, colour_records, write_json

    from lyre.finetune.command import finetune

    data = write_json(tmp_path / "colours.json", colour_records(24))
    out = tmp_path / "lora"
    finetune(base_run(tmp_path_factory), data, out, lora_rank=4, progress=False, plot=False, quiet=True,
             overrides=["batch_size=4", "max_iters=2"])
    task = tmp_path / "colours.jsonl"
    task.write_text("".join(json.dumps({"context": f"The {n} is", "choices": ["blue", "green", "red"],
                                        "gold": i % 3}) + "\n" for i, n in enumerate(["sky", "grass", "rose"])))
    r = evaluate_task(out, task, batch_size=2)
    assert r.n == 3 and len(r.predictions) == 3 and r.kind == "multiple_choice"
