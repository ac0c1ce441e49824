"""`lyre attention`: the maps are real attention probabilities, the image has one cell per
(layer, head), and runs without attention say so in one line."""

from __future__ import annotations

import pytest
import torch
from cli_util import assert_one_line_error, run_cli
from PIL import Image
from test_zoo_seq2seq import TINY_TOML

from lyre.generate.runs import load_run
from lyre.run.config import load_config
from lyre.train.trainer import train
from lyre.zoo.attention import draw_maps, gpt_maps, grid_pixels, seq2seq_maps


@pytest.fixture(scope="module")
def two_layer_gpt(tmp_path_factory, tiny_config):
    """A tiny GPT with 2 layers x 2 heads, so the grid has both dimensions."""
    run_dir = tmp_path_factory.mktemp("attn") / "gpt"
    train(tiny_config("n_layer=2", "max_iters=2", "eval_interval=2"), run_dir, progress=False, plot=False)
    return run_dir


def test_gpt_maps_are_causal_probabilities_and_leave_the_output_alone(two_layer_gpt):
    run = load_run(two_layer_gpt, device="cpu")
    prompt = "Sing, O goddess"
    ids = torch.tensor([run.tokenizer.encode(prompt)])
    before, _ = run.model(ids)
    maps = gpt_maps(run.model, run.tokenizer, prompt)
    after, _ = run.model(ids)
    torch.testing.assert_close(before, after)  # the recording was undone
    T = len(prompt)
    assert maps.weights.shape == (2, 2, T, T)
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(2, 2, T))
    assert torch.all(maps.weights.triu(1) == 0)  # nothing attends to the future
    assert maps.queries[4] == "," and maps.queries[5] == "\u2423"  # a visible space


def test_cli_draws_one_cell_per_layer_and_head(capsys, two_layer_gpt, tmp_path):
    out = tmp_path / "maps" / "attn.png"
    code, stdout, err = run_cli(capsys, "attention", two_layer_gpt, "--prompt", "Sing, O goddess", "--out", out)
    assert code == 0, err
    assert str(out) in stdout
    assert Image.open(out).size == grid_pixels(2, 2, len("Sing, O goddess"))
    assert not list(out.parent.glob("*.tmp"))


def test_grid_size_follows_the_layers_and_heads(two_layer_gpt, tmp_path):
    run = load_run(two_layer_gpt, device="cpu")
    maps = gpt_maps(run.model, run.tokenizer, "Sing")
    maps.weights = maps.weights[:1]  # one layer of two heads
    draw_maps(maps, tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").size == grid_pixels(1, 2, 4)
    w2, h2 = grid_pixels(2, 2, 4)
    w1, h1 = grid_pixels(1, 2, 4)
    assert w1 == w2 and h1 < h2


def test_cross_attention_of_an_encoder_decoder(capsys, tmp_path):
    toml = tmp_path / "s2s.toml"
    toml.write_text(TINY_TOML)
    run_dir = tmp_path / "s2s"
    train(load_config(toml, ["n_layer=2", "max_iters=2", "eval_interval=2"]), run_dir, progress=False,
          plot=False)
    run = load_run(run_dir, device="cpu")
    for kind in ("cross", "encoder", "decoder"):
        maps = seq2seq_maps(run.model, run.tokenizer, "dcba", kind)
        source = ["d", "c", "b", "a", "<eos>"]
        assert maps.keys == (source if kind != "decoder" else maps.queries)
        assert maps.queries[0] == ("<bos>" if kind != "encoder" else "d")
        assert maps.weights.shape == (2, 2, len(maps.queries), len(maps.keys))
        out = tmp_path / f"{kind}.png"
        code, _, err = run_cli(capsys, "attention", run_dir, "--prompt", "dcba", "--out", out, "--kind", kind)
        assert code == 0, err
        n_tokens = max(len(maps.queries), len(maps.keys))
        assert Image.open(out).size == grid_pixels(2, 2, n_tokens)


def test_runs_without_attention_and_bad_outputs_are_one_line(capsys, tmp_path, tiny_config, two_layer_gpt):
    run_dir = tmp_path / "lstm"
    train(tiny_config("arch=lstm", "n_hidden=8", "max_iters=1", "eval_interval=1"), run_dir,
          progress=False, plot=False)
    assert_one_line_error(*run_cli(capsys, "attention", run_dir, "--prompt", "Sing", "--out", tmp_path / "a.png")[::2],
                   r"model.arch=lstm has no attention to draw")
    assert_one_line_error(*run_cli(capsys, "attention", two_layer_gpt, "--prompt", "Sing", "--out", tmp_path / "a.gif")[::2],
                   r"use a file name ending in .png, .svg or .pdf")
    assert_one_line_error(*run_cli(capsys, "attention", two_layer_gpt, "--prompt", "", "--out", tmp_path / "a.png")[::2],
                   r"the prompt is empty")


@pytest.mark.parametrize("kind", ["cross", "encoder"])
def test_a_gpt_asked_for_cross_or_encoder_attention_is_one_line(capsys, tmp_path, two_layer_gpt, kind):
    """Not its self-attention drawn under another name (issue 19.16); --kind decoder is what a
    GPT's causal self-attention is, and it draws."""
    out = tmp_path / "a.png"
    assert_one_line_error(*run_cli(capsys, "attention", two_layer_gpt, "--prompt", "Sing", "--out", out,
                                   "--kind", kind)[::2],
                          rf"a GPT has \(causal\) self-attention only; --kind {kind} needs an encoder-decoder")
    assert not out.exists()
    code, _, err = run_cli(capsys, "attention", two_layer_gpt, "--prompt", "Sing", "--out", out, "--kind", "decoder")
    assert code == 0 and out.exists(), err
