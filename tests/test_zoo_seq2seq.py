"""The encoder-decoder Transformer (arch seq2seq): masks, cached decoding, beam search, the
pairs task (trains, resumes exactly), the toy tasks, the CLI verbs and their bad inputs."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_util import assert_one_line_error, records, run_cli

from lyre.core.errors import LyreError
from lyre.data.pairs import read_pairs
from lyre.data.toy import toy_pairs
from lyre.model import build_model
from lyre.model.seq2seq import Seq2SeqConfig
from lyre.run import checkpoint as ckpt
from lyre.run.config import load_config
from lyre.train.trainer import train
from lyre.zoo.translate import beam_search, greedy_decode

TINY_TOML = """\
[model]
arch = "seq2seq"
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16
dropout = 0.0

[data]
corpus = ["toy:sort:300"]
tokenizer = "char"

[train]
batch_size = 8
max_iters = 8
eval_interval = 4
eval_windows = 4
lr = 3e-3
warmup_iters = 2
log_interval = 1
device = "cpu"
threads = 1
"""


@pytest.fixture(scope="module")
def s2s_toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("s2s") / "tiny-s2s.toml"
    path.write_text(TINY_TOML)
    return path


@pytest.fixture(scope="module")
def s2s_run(tmp_path_factory, s2s_toml) -> Path:
    """A finished tiny seq2seq run on toy:sort (read it, never change it)."""
    run_dir = tmp_path_factory.mktemp("s2s-run") / "sort"
    train(load_config(s2s_toml), run_dir, progress=False, plot=False)
    return run_dir


def tiny_model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    config = Seq2SeqConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                           **overrides)
    return build_model(config).eval()


# ----------------------------------------------------------------------------------------------
# The model


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_padding_changes_nothing_for_the_real_tokens(norm_first):
    """A source padded with PAD and a right-padded target give the same logits at real positions."""
    model = tiny_model(norm_first=norm_first)
    c = model.config
    src, tgt = torch.tensor([[1, 2, 3, c.eos_id]]), torch.tensor([[c.bos_id, 4, 5]])
    alone, _ = model(src, tgt)
    padded_src = torch.tensor([[1, 2, 3, c.eos_id, c.pad_id, c.pad_id]])
    padded_tgt = torch.tensor([[c.bos_id, 4, 5, c.pad_id]])
    padded, _ = model(padded_src, padded_tgt)
    torch.testing.assert_close(padded[:, :3], alone)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_cached_decoding_gives_the_teacher_forced_logits(norm_first):
    model = tiny_model(norm_first=norm_first)
    c = model.config
    src = torch.tensor([[1, 2, 3, c.eos_id], [4, 5, c.eos_id, c.pad_id]])
    tgt = torch.tensor([[c.bos_id, 6, 7, 8], [c.bos_id, 9, 1, 2]])
    full, _ = model(src, tgt)
    cache = model.start(src)
    for t in range(tgt.size(1)):
        torch.testing.assert_close(model.decode_step(tgt[:, t : t + 1], cache), full[:, t])


def test_the_decoder_cannot_see_the_future():
    model = tiny_model()
    c = model.config
    src = torch.tensor([[1, 2, c.eos_id]])
    a, _ = model(src, torch.tensor([[c.bos_id, 4, 5, 6]]))
    b, _ = model(src, torch.tensor([[c.bos_id, 4, 9, 9]]))
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_label_smoothing_changes_only_the_training_loss():
    plain, smooth = tiny_model(), tiny_model(label_smoothing=0.1)
    c = plain.config
    src, tgt, out = torch.tensor([[1, 2, c.eos_id]]), torch.tensor([[c.bos_id, 4]]), torch.tensor([[4, c.eos_id]])
    logits, loss = smooth(src, tgt, out)
    expected = F.cross_entropy(logits.view(-1, c.vocab_size), out.view(-1), label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    assert not torch.isclose(loss, plain(src, tgt, out)[1])


def sequence_score(model, source: list[int], target: list[int], alpha: float = 0.6) -> float:
    """Log-probability of target + EOS, divided by the length penalty beam search ranks by."""
    c = model.config
    logits, _ = model(torch.tensor([source]), torch.tensor([[c.bos_id] + target]))
    logp = F.log_softmax(logits[0], dim=-1)
    total = sum(logp[i, t].item() for i, t in enumerate(target + [c.eos_id]))
    return total / ((5 + len(target) + 1) / 6) ** alpha


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_scores_at_least_as_well_as_greedy(seed):
    model = tiny_model()
    c = model.config
    torch.manual_seed(seed)
    source = torch.randint(0, c.pad_id, (5,)).tolist() + [c.eos_id]
    greedy = greedy_decode(model, [source], max_length=8)[0]
    assert beam_search(model, source, beam=1, max_length=8) == greedy
    beam = beam_search(model, source, beam=4, max_length=8)
    if c.eos_id not in greedy and len(greedy) == 8:
        return  # greedy never finished: no score to compare
    assert sequence_score(model, source, beam) >= sequence_score(model, source, greedy) - 1e-6


def test_beam_width_below_one_is_refused():
    model = tiny_model()
    with pytest.raises(LyreError, match="beam width must be an integer >= 1"):
        beam_search(model, [1, model.config.eos_id], beam=0)


# ----------------------------------------------------------------------------------------------
# Data


def test_toy_tasks_are_deterministic_distinct_and_right():
    pairs = toy_pairs("dates", 500)
    assert pairs == toy_pairs("dates", 500)
    assert len({s for s, _ in pairs}) == 500
    for source, target in pairs:
        day = dt.date.fromisoformat(target)
        assert str(day.year) in source
    assert all(t == "".join(sorted(s)) for s, t in toy_pairs("sort", 50))
    assert all(t == s[::-1] for s, t in toy_pairs("reverse", 50))
    with pytest.raises(LyreError, match="unknown toy task 'nope'; known: dates, reverse, sort"):
        toy_pairs("nope")


def test_pairs_files_tsv_and_jsonl(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("abc\tcba\n\nxy\tyx\n")
    assert [(p.source, p.target) for p in read_pairs(str(tsv))] == [("abc", "cba"), ("xy", "yx")]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"source": "a", "target": "b"}\n')
    assert [(p.source, p.target) for p in read_pairs(str(jsonl))] == [("a", "b")]
    tsv.write_text("abc\tcba\nno tab here\n")
    with pytest.raises(LyreError, match=r"p.tsv:2: expected source<TAB>target"):
        read_pairs(str(tsv))
    jsonl.write_text('{"source": "a"}\n')
    with pytest.raises(LyreError, match=r"p.jsonl:1: expected an object"):
        read_pairs(str(jsonl))


# ----------------------------------------------------------------------------------------------
# Training


def test_the_toy_run_trains_and_reports_exact_match(s2s_run):
    evals = [r for r in records(s2s_run) if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    assert evals[-1]["val_exact"] is True and 0.0 <= evals[-1]["val_exact_match"] <= 1.0
    assert evals[-1]["val_pairs"] == 30  # the last 10% of 300 pairs, all of them at the end
    losses = [r["loss"] for r in records(s2s_run) if "loss" in r]
    assert losses[-1] < losses[0]
    config = json.loads((s2s_run / "config.json").read_text())
    assert config["model"]["vocab_size"] == 26 + 1 + 3  # the letters, <|endoftext|> (unused here) + PAD, BOS, EOS


def test_n_steps_resume_n_steps_equals_2n_straight(tmp_path, s2s_toml):
    overrides = ["dropout=0.1", "label_smoothing=0.1"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(load_config(s2s_toml, overrides), straight, progress=False, plot=False)
    train(load_config(s2s_toml, overrides), split, stop_at=3, progress=False, plot=False)
    assert train(None, split, resume=True, progress=False, plot=False).step == 8
    assert records(split) == records(straight)
    a, b = ckpt.load_model_state(split, "last"), ckpt.load_model_state(straight, "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_pairs_file_trains(tmp_path, s2s_toml):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{s}\t{t}\n" for s, t in toy_pairs("reverse", 40)))
    run_dir = tmp_path / "rev"
    result = train(load_config(s2s_toml, [f"data.corpus={json.dumps(str(pairs))}", "max_iters=2",
                                          "eval_interval=2"]), run_dir, progress=False, plot=False)
    assert result.step == 2 and math.isfinite(result.val_loss)
    assert len((run_dir / "data" / "val.jsonl").read_text().splitlines()) == 4


# ----------------------------------------------------------------------------------------------
# The command line


def test_translate_sample_and_eval(capsys, s2s_run, tmp_path):
    code, out, err = run_cli(capsys, "translate", s2s_run, "--text", "dcba", "--text", "zyx", "--beam", "3")
    assert code == 0, err
    assert len(out.splitlines()) == 2 and all(set(line) <= set("abcdefghijklmnopqrstuvwxyz")
                                              for line in out.splitlines())
    code, out, err = run_cli(capsys, "sample", s2s_run, "--prompt", "dcba")
    assert code == 0 and len(out.splitlines()) == 1, err
    code, out, err = run_cli(capsys, "eval", s2s_run, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["pairs"] == 30 and 0 <= result["exact_match"] <= 1 and result["loss"] > 0
    pairs = tmp_path / "held.jsonl"
    pairs.write_text('{"source": "cab", "target": "abc"}\n{"source": "ba", "target": "ab"}\n')
    code, out, err = run_cli(capsys, "eval", s2s_run, "--data", pairs, "--json")
    assert code == 0 and json.loads(out)["pairs"] == 2, err


def test_encoder_decoder_given_plain_text_is_one_line(capsys, tmp_path, s2s_toml, tiny_corpus):
    code, _, err = run_cli(capsys, "train", "--config", s2s_toml, "--out", tmp_path / "x", "--no-progress",
                           "--set", f"data.corpus={json.dumps(str(tiny_corpus))}")
    assert_one_line_error(code, err, r"is not a pairs file.*\.tsv.*\.jsonl.*toy:dates")


def test_encoder_decoder_given_prepared_lm_tokens_is_one_line(capsys, tmp_path, s2s_toml, tiny_corpus):
    assert run_cli(capsys, "prepare", tiny_corpus, "--out", tmp_path / "tokens")[0] == 0
    code, _, err = run_cli(capsys, "train", "--config", s2s_toml, "--out", tmp_path / "x", "--no-progress",
                           "--set", f"data.data_dir={json.dumps(str(tmp_path / 'tokens'))}")
    assert_one_line_error(code, err, r"holds language-model tokens")


@pytest.mark.parametrize("corpus", ["pairs.tsv", "toy:dates"])
def test_language_model_given_pairs_is_one_line(capsys, tmp_path, tiny_toml, corpus):
    if corpus == "pairs.tsv":
        (tmp_path / corpus).write_text("abc\tcba\nde\ted\n")
        corpus = str(tmp_path / corpus)
    for arch in ("gpt", "lstm"):
        code, _, err = run_cli(capsys, "train", "--config", tiny_toml, "--out", tmp_path / arch,
                               "--no-progress", "--set", f"arch={arch}",
                               "--set", f"data.corpus={json.dumps(corpus)}")
        assert_one_line_error(code, err, rf"holds \(source, target\) pairs, but model.arch={arch} is a language model")


def test_pairs_longer_than_the_context_are_one_line(capsys, tmp_path, s2s_toml):
    pairs = tmp_path / "long.tsv"
    pairs.write_text("ab\tba\n" + "x" * 20 + "\ty\ncd\tdc\n")
    code, _, err = run_cli(capsys, "train", "--config", s2s_toml, "--out", tmp_path / "x", "--no-progress",
                           "--set", f"data.corpus={json.dumps(str(pairs))}")
    assert_one_line_error(code, err, r"the source at .*long.tsv:2 is 21 tokens with EOS, longer than model.block_size=16")


def test_bad_translate_inputs_are_one_line(capsys, s2s_run, trained_run):
    assert_one_line_error(*run_cli(capsys, "translate", s2s_run, "--text", "abc", "--beam", "0")[::2],
                   r"beam width must be an integer >= 1; got 0")
    assert_one_line_error(*run_cli(capsys, "translate", s2s_run, "--text", "a" * 40)[::2],
                   r"longer than model.block_size=16")
    assert_one_line_error(*run_cli(capsys, "translate", trained_run, "--text", "abc")[::2],
                   r"is a language model .*needs an encoder-decoder run")
    assert_one_line_error(*run_cli(capsys, "sample", s2s_run)[::2], r"encoder-decoder: give the source")


def test_translate_threads_and_unknown_characters(capsys, s2s_run):
    """--threads exists (issue 19.19); an unknown character's hint names a flag that translate
    has, and the flag works (19.18)."""
    code, out, err = run_cli(capsys, "translate", s2s_run, "--text", "dcba", "--threads", "1")
    assert code == 0 and len(out.splitlines()) == 1, err
    assert_one_line_error(*run_cli(capsys, "translate", s2s_run, "--text", "ab", "--threads", "-1")[::2],
                          r"--threads must be >= 0")
    code, _, err = run_cli(capsys, "translate", s2s_run, "--text", "ab\u2603")
    assert_one_line_error(code, err, r"is not in this char-level model.*--replace-unknown \(.*translate\)")
    code, out, err = run_cli(capsys, "translate", s2s_run, "--text", "ab\u2603", "--replace-unknown")
    assert code == 0 and len(out.splitlines()) == 1, err


def test_translate_a_file_and_refuse_chat(capsys, s2s_run, tmp_path):
    sources = tmp_path / "sources.txt"
    sources.write_text("dcba\nzyx\nq\n")
    code, out, err = run_cli(capsys, "translate", s2s_run, "--file", sources)
    assert code == 0 and len(out.splitlines()) == 3, err
    assert_one_line_error(*run_cli(capsys, "chat", s2s_run, "-p", "abc", "--history", "")[::2],
                   r"model.arch=seq2seq is an encoder-decoder.*lyre translate")
