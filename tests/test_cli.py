"""The `lyre` command, driven in-process through lyre.cli.main.

Bad input must end in exactly one line `lyre: error: ...` on stderr, exit code 2, no traceback,
and leave whatever was already on disk as it was.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys

import pytest
from cli_util import assert_one_line_error, run_cli

from lyre.cli import build_parser, main
from lyre.model.gpt import GPT
from lyre.run.config import load_config

PROMPT = "Sing, O goddess, the anger of Achilles"  # every character is in the tiny vocabulary



def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


# ----------------------------------------------------------------------------------------------
# Help

# The flags issue 2 names; every other flag a subcommand has is checked too, below.
DOCUMENTED = {
    "prepare": ["--tokenizer", "--out", "--val-fraction", "--force"],
    "train": ["--config", "--set", "--out", "--resume", "--force", "--no-progress"],
    "sample": ["--prompt", "--prompt-file", "--max-new-tokens", "--temperature", "--top-k",
               "--top-p", "--seed", "--num-samples"],
    "info": ["--set"],
    "plot": ["--out"],
}


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in subcommands():
        assert name in out


@pytest.mark.parametrize("command", sorted(DOCUMENTED))
def test_subcommand_help_documents_every_flag(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    parser = subcommands()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, f"{command}: {action.dest} has no help"
        for flag in action.option_strings or [action.metavar or action.dest]:
            assert flag in out, f"{command} --help does not mention {flag}"
    for flag in DOCUMENTED.get(command, []):
        assert flag in out, f"{command} --help does not mention {flag}"


@pytest.mark.parametrize("command", sorted(set(subcommands()) - set(DOCUMENTED)))
def test_later_subcommands_have_help(capsys, command):
    """Subcommands of later issues: --help works and names every flag (their own tests go further)."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for action in subcommands()[command]._actions:
        for flag in action.option_strings:
            assert flag in out


def test_the_command_line_and_the_package_import_without_torch():
    """`import lyre` and building every verb's flags stay cheap: torch (about a second) is
    imported by the commands that use it, not by `lyre --help` or `lyre rag index`."""
    import subprocess

    code = ("import sys, lyre, lyre.cli, lyre.rag.cli; lyre.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    import lyre

    assert lyre.GPT is GPT and "load_run" in dir(lyre)  # the public names still resolve


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


# ----------------------------------------------------------------------------------------------
# info


def test_info_reproduces_gpt2_124m(capsys):
    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    assert "124,439,808" in out


def test_info_reproduces_gpt3_175b(capsys):
    code, out, _ = run_cli(capsys, "info", "--set", "n_layer=96", "--set", "n_embd=12288",
                           "--set", "n_head=96", "--set", "block_size=2048")
    assert code == 0
    params = int(re.search(r"parameters\s+([\d,]+)", out).group(1).replace(",", ""))
    assert 174e9 < params < 176e9
    fp32_gb = float(re.search(r"weights fp32\s+([\d.]+) GB", out).group(1))
    assert 690 < fp32_gb < 710


def test_info_of_a_run_directory(capsys, trained_run):
    code, out, _ = run_cli(capsys, "info", trained_run)
    assert code == 0
    assert "1 layers x 16 dims x 2 heads, context 16" in out


# ----------------------------------------------------------------------------------------------
# sample


def sample(capsys, run_dir, *extra):
    return run_cli(capsys, "sample", run_dir, "--max-new-tokens", 40, "--device", "cpu", *extra)


def test_same_seed_same_output(capsys, trained_run):
    code, first, _ = sample(capsys, trained_run, "--prompt", PROMPT, "--seed", 3)
    assert code == 0
    assert first.startswith(PROMPT) and len(first) > len(PROMPT) + 20
    assert sample(capsys, trained_run, "--prompt", PROMPT, "--seed", 3)[1] == first
    assert sample(capsys, trained_run, "--prompt", PROMPT, "--seed", 4)[1] != first


def test_temperature_zero_is_greedy_whatever_the_seed(capsys, trained_run):
    code, first, _ = sample(capsys, trained_run, "--prompt", PROMPT, "--temperature", 0, "--seed", 1)
    assert code == 0
    assert sample(capsys, trained_run, "--prompt", PROMPT, "--temperature", 0, "--seed", 2)[1] == first
    assert sample(capsys, trained_run, "--prompt", PROMPT, "--temperature", 0)[1] == first


def test_prompt_longer_than_the_context_is_cropped_with_a_notice(capsys, trained_run):
    assert len(PROMPT) > 16  # the tiny context
    code, out, err = sample(capsys, trained_run, "--prompt", PROMPT, "--seed", 1)
    assert code == 0 and out
    assert "crop" in err.lower() and "lyre: error" not in err


def test_prompt_file(capsys, trained_run, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(PROMPT, encoding="utf-8")
    by_file = sample(capsys, trained_run, "--prompt-file", prompt_file, "--seed", 9)
    by_flag = sample(capsys, trained_run, "--prompt", PROMPT, "--seed", 9)
    assert by_file[0] == 0 and by_file[1] == by_flag[1]


class _Recorder(io.StringIO):
    """A stdout that counts flushes, to see text leave while generation is still running."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_sample_streams_to_stdout(trained_run, monkeypatch):
    stdout, written_at_forward = _Recorder(), []
    real_forward = GPT.forward

    def forward(self, *args, **kwargs):
        written_at_forward.append(len(stdout.getvalue()))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", forward)
    monkeypatch.setattr(sys, "stdout", stdout)
    code = main(["sample", str(trained_run), "--prompt", "Sing", "--max-new-tokens", "30",
                 "--seed", "1", "--device", "cpu"])
    assert code == 0
    assert len(stdout.getvalue()) > len("Sing") + 20
    # Generated text was already out (and flushed) while the model was still being run.
    assert max(written_at_forward) > len("Sing") + 10
    assert stdout.flushes >= 10


# ----------------------------------------------------------------------------------------------
# plot


def test_plot_writes_png_and_svg(capsys, trained_run, tmp_path):
    code, out, _ = run_cli(capsys, "plot", trained_run, "--out", tmp_path / "curves" / "loss.png")
    assert code == 0 and "loss.png" in out
    assert (tmp_path / "curves" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_cli(capsys, "plot", trained_run, "--out", tmp_path / "loss.svg")[0] == 0
    assert b"<svg" in (tmp_path / "loss.svg").read_bytes()[:2000]
    assert not list(tmp_path.rglob("*.tmp"))


def test_plot_default_path(capsys, trained_run, copy_run):
    run_dir = copy_run(trained_run)
    (run_dir / "loss.png").unlink()
    assert run_cli(capsys, "plot", run_dir)[0] == 0
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------------------
# train


def test_train_then_resume_through_the_cli(capsys, tiny_toml, tmp_path):
    run_dir = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", "--config", tiny_toml, "--out", run_dir,
                           "--set", "train.max_iters=3", "--no-progress")
    assert code == 0 and "done: step 3" in out and "val loss" in out
    code, out, _ = run_cli(capsys, "train", "--resume", run_dir, "--set", "train.max_iters=5",
                           "--no-progress")
    assert code == 0 and "done: step 5" in out


def test_train_without_config_trains_the_demo_preset(capsys, tmp_path, monkeypatch):
    """Not the library defaults (GPT-2 124M): that would take days on a CPU."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", "--set", "train.max_iters=1", "--set", "batch_size=1",
                             "--set", "block_size=8", "--set", "final_eval=false",
                             "--set", "eval_windows=1", "--set", "threads=1", "--no-progress")
    assert code == 0, err
    assert "iliad-char.toml" in err and "done: step 1" in out
    config = json.loads((tmp_path / "runs" / "iliad-char" / "config.json").read_text())
    preset = load_config("iliad-char")
    assert config["model"]["n_embd"] == preset.model.n_embd


@pytest.mark.parametrize("name", ["iliad-char", "iliad-char.toml"])
def test_train_a_preset_by_name(capsys, tmp_path, monkeypatch, name):
    """From any working directory: the presets ship inside the package. The run directory
    defaults to runs/<preset name>."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", "--config", name, "--set", "train.max_iters=1",
                             "--set", "batch_size=1", "--set", "block_size=8", "--set", "final_eval=false",
                             "--set", "eval_windows=1", "--set", "threads=1", "--no-progress")
    assert code == 0, err
    assert "done: step 1" in out
    saved = json.loads((tmp_path / "runs" / "iliad-char" / "config.json").read_text())
    assert saved["model"]["n_embd"] == load_config("iliad-char").model.n_embd


@pytest.mark.parametrize("config", ["nope", "nope.toml", "configs/iliad-char.toml"])
def test_unknown_preset_is_one_line_listing_the_presets(capsys, tmp_path, monkeypatch, config):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "train", "--config", config, "--no-progress")
    assert_one_line_error(code, err, "calculator-base, gpt2-124m, gpt2-large, gpt2-medium, gpt2-xl, iliad-bpe, iliad-char, iliad-gru, iliad-lstm, "
                          "iliad-rnn, seq2seq-dates, shakespeare-char, shakespeare-char-cpu")
    assert not (tmp_path / "runs").exists()
    assert_one_line_error(*run_cli(capsys, "info", config)[::2], "iliad-char")


def test_info_of_a_preset_by_name(capsys):
    code, out, _ = run_cli(capsys, "info", "gpt2-124m")
    assert code == 0 and "124,439,808" in out


def test_presets_lists_every_preset_with_its_description(capsys):
    code, out, _ = run_cli(capsys, "presets")
    assert code == 0
    lines = out.splitlines()
    for name in ("iliad-char", "shakespeare-char-cpu", "shakespeare-char", "gpt2-124m"):
        assert any(line.split()[0] == name and len(line.split()) > 2 for line in lines), out


@pytest.mark.parametrize("flag", [["--config", "x.toml"], ["--out", "elsewhere"], ["--force"]])
def test_resume_refuses_flags_it_would_ignore(capsys, trained_run, copy_run, flag, tree_digest):
    run_dir = copy_run(trained_run)
    before = tree_digest(run_dir)
    code, _, err = run_cli(capsys, "train", "--resume", run_dir, *flag)
    assert_one_line_error(code, err, re.escape(flag[0]))
    assert tree_digest(run_dir) == before


# ----------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing damaged

SHORT_TEXT = "Sing, O goddess, the anger of Achilles son of Peleus, that brought countless ills upon "


@pytest.mark.parametrize(
    "content,pattern",
    [
        (None, "not found"),
        (b"", "empty"),
        (b"\xff\xfeS\x00i\x00n\x00g\x00" * 40, "UTF-8|binary"),  # UTF-16, as Windows saves it
        (("Achilles' wrath, caf\u00e9 " * 20).encode("latin-1"), "not valid UTF-8.*byte offset 20"),
        (b"Sing, O goddess" + bytes(range(0, 32)) * 20, "binary|NUL"),
        (b"Sing, O goddess, the anger of Achilles", "too short|fewer than"),
        (SHORT_TEXT.encode(), r"fewer than block_size\+1"),  # 87 chars: val gets 9 < 17
    ],
    ids=["missing", "empty", "utf16", "latin1", "binary", "too-short-to-split", "shorter-than-context"],
)
def test_bad_corpus(capsys, tmp_path, tiny_toml, content, pattern):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_bytes(content)
    run_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--config", tiny_toml, "--out", run_dir, "--no-progress",
                           "--set", f"data.corpus='{corpus.as_posix()}'")
    assert_one_line_error(code, err, pattern)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "config.json").exists()


@pytest.mark.parametrize(
    "content,pattern",
    [(None, "not found"), (b"", "empty"), (b"\xff\xfe" * 40, "UTF-8"), (b"ab\x00cd" * 40, "NUL")],
    ids=["missing", "empty", "not-utf8", "binary"],
)
def test_bad_corpus_for_prepare(capsys, tmp_path, content, pattern):
    corpus = tmp_path / "corpus.txt"
    if content is not None:
        corpus.write_bytes(content)
    code, _, err = run_cli(capsys, "prepare", corpus, "--out", tmp_path / "data")
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["corpus.txt"] if content is not None else [])


@pytest.mark.parametrize(
    "overrides,toml_extra,pattern",
    [
        (["model.n_layers=2"], "", r"--set model.n_layers: unknown config key \(did you mean 'model.n_layer'\?\)"),
        (["learning_rate=1e-3"], "", "--set learning_rate: unknown config key"),
        ([], "[optim]\nlr = 1\n", "unknown key"),
        (["n_layer=two"], "", "^lyre: error: --set n_layer: expected int"),
        (["train.max_iters=1.5"], "", "expected int"),
        (["train.compile=yes"], "", "true or false"),
        (["n_head=3"], "", r"n_embd \(16\) must be divisible by model.n_head \(3\)"),
        (["train.eval_interval=0"], "", "eval_interval must be at least 1"),
        (["pos=spiral"], "", "model.pos must be one of"),
    ],
    ids=["unknown-key", "unknown-bare-key", "unknown-section", "wrong-type-blamed-on-the-command-line", "float-for-int",
         "not-a-bool", "n_embd-not-divisible", "zero-interval", "bad-choice"],
)
def test_bad_config(capsys, tmp_path, tiny_toml, overrides, toml_extra, pattern):
    config = tmp_path / "config.toml"
    config.write_text(tiny_toml.read_text() + toml_extra)
    argv = ["train", "--config", config, "--out", tmp_path / "run", "--no-progress"]
    for item in overrides:
        argv += ["--set", item]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_wrong_type_in_the_toml_file(capsys, tmp_path, tiny_toml):
    config = tmp_path / "config.toml"
    config.write_text(tiny_toml.read_text().replace("n_layer = 1", 'n_layer = "1"'))
    code, _, err = run_cli(capsys, "train", "--config", config, "--out", tmp_path / "run")
    assert_one_line_error(code, err, "n_layer: expected int")


def test_missing_config_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--config", tmp_path / "nope.toml", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "not found")


def test_prompt_outside_the_char_vocabulary(capsys, trained_run):
    code, out, err = sample(capsys, trained_run, "--prompt", "Sing \u2603 of Troy")
    assert_one_line_error(code, err, r"'\u2603'.*position 5")
    assert out == ""


def test_bad_sampling_flags(capsys, trained_run):
    assert_one_line_error(*sample(capsys, trained_run, "--top-p", 0)[::2], "top_p")
    assert_one_line_error(*sample(capsys, trained_run, "--temperature", -1)[::2], "temperature")


def test_run_dir_without_checkpoints(capsys, tmp_path, trained_run, tree_digest):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_bytes((trained_run / "config.json").read_bytes())
    before = tree_digest(run_dir)
    assert_one_line_error(*sample(capsys, run_dir)[::2], "no checkpoint")
    assert_one_line_error(*run_cli(capsys, "train", "--resume", run_dir)[::2], "no checkpoint")
    assert tree_digest(run_dir) == before


def test_not_a_run_directory(capsys, tmp_path):
    assert_one_line_error(*sample(capsys, tmp_path / "missing")[::2], "does not exist")
    assert_one_line_error(*sample(capsys, tmp_path)[::2], "config.json not found")
    assert_one_line_error(*run_cli(capsys, "train", "--resume", tmp_path)[::2], "config.json not found")
    assert_one_line_error(*run_cli(capsys, "plot", tmp_path)[::2], "metrics.jsonl not found")


@pytest.mark.parametrize("damage", ["truncated-model", "corrupt-state"])
def test_damaged_checkpoint(capsys, trained_run, copy_run, tree_digest, damage):
    run_dir = copy_run(trained_run)
    for name in ("best", "last"):
        ckpt_dir = run_dir / "checkpoints" / name
        if damage == "truncated-model":
            data = (ckpt_dir / "model.safetensors").read_bytes()
            (ckpt_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
        else:
            (ckpt_dir / "state.json").write_text('{"format": "lyre-checkpoint", "files": {')
    before = tree_digest(run_dir)
    pattern = "truncated or corrupt" if damage == "truncated-model" else "corrupt"
    assert_one_line_error(*sample(capsys, run_dir)[::2], pattern)
    assert_one_line_error(*sample(capsys, run_dir, "--checkpoint", "last")[::2], pattern)
    code, _, err = run_cli(capsys, "train", "--resume", run_dir, "--set", "train.max_iters=30",
                           "--no-progress")
    assert_one_line_error(code, err, pattern)
    assert tree_digest(run_dir) == before


def test_unknown_checkpoint_name(capsys, trained_run):
    assert_one_line_error(*sample(capsys, trained_run, "--checkpoint", "bset")[::2],
                          "no checkpoint 'bset'.*available: best, last")


def test_out_dir_holding_another_run_needs_force(capsys, trained_run, copy_run, tiny_toml, tree_digest):
    run_dir = copy_run(trained_run)
    before = tree_digest(run_dir)
    argv = ["train", "--config", tiny_toml, "--out", run_dir, "--set", "train.max_iters=3", "--no-progress"]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "already holds a run.*--force")
    assert tree_digest(run_dir) == before  # byte for byte, mtimes too

    code, out, _ = run_cli(capsys, *argv, "--force")
    assert code == 0 and "done: step 3" in out
    steps = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(steps) == 3  # the old run's 20 steps are gone


def test_out_path_is_a_file(capsys, tmp_path, tiny_toml):
    target = tmp_path / "file"
    target.write_text("keep me")
    code, _, err = run_cli(capsys, "train", "--config", tiny_toml, "--out", target)
    assert_one_line_error(code, err, "not a directory")
    assert target.read_text() == "keep me"


def test_plot_to_an_unknown_format(capsys, trained_run, tmp_path):
    code, _, err = run_cli(capsys, "plot", trained_run, "--out", tmp_path / "loss.txt")
    assert_one_line_error(code, err, r"\.png")
    assert not list(tmp_path.iterdir())


def test_info_bad_override(capsys):
    assert_one_line_error(*run_cli(capsys, "info", "--set", "n_head=5")[::2], "divisible")


def test_prepare_refuses_to_overwrite_without_force(capsys, tmp_path, tiny_corpus, tree_digest):
    out_dir = tmp_path / "data"
    assert run_cli(capsys, "prepare", tiny_corpus, "--out", out_dir)[0] == 0
    before = tree_digest(out_dir)
    code, out, _ = run_cli(capsys, "prepare", tiny_corpus, "--out", out_dir)  # the same: a no-op
    assert code == 0 and "up to date" in out and tree_digest(out_dir) == before
    assert_one_line_error(*run_cli(capsys, "prepare", tiny_corpus, "--out", out_dir,
                                   "--val-fraction", "0.2")[::2], "--force")
    assert tree_digest(out_dir) == before
    assert run_cli(capsys, "prepare", tiny_corpus, "--out", out_dir, "--val-fraction", "0.2",
                   "--force")[0] == 0


def test_train_on_a_prepared_data_dir(capsys, tmp_path, tiny_corpus, tiny_toml):
    data = tmp_path / "data"
    assert run_cli(capsys, "prepare", tiny_corpus, "--out", data)[0] == 0
    code, out, _ = run_cli(capsys, "train", "--config", tiny_toml, "--out", tmp_path / "run",
                           "--set", f"data.data_dir='{data.as_posix()}'", "--set", "train.max_iters=2",
                           "--no-progress")
    assert code == 0 and "done: step 2" in out
    assert not (tmp_path / "run" / "data").exists()


# ----------------------------------------------------------------------------------------------
# Stopped by a signal under `--nproc` (torchrun's outcome faked: no process is started)


def _launch_ending_in(monkeypatch, capsys, tiny_toml, tmp_path, error: BaseException) -> tuple[int, str, str]:
    import torch.distributed.run as torchrun

    def run(args):
        raise error

    monkeypatch.setattr(torchrun, "run", run)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # launch() sets a default in os.environ
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return run_cli(capsys, "train", "--nproc", "2", "--config", tiny_toml, "--out", tmp_path / "run",
                   "--set", "train.device=cpu")


def _failure(rank: int, exitcode: int, timestamp: int):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    failure = ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file="")
    failure.timestamp = timestamp
    return failure


@pytest.mark.parametrize("signame,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_nproc_run_stopped_by_a_signal_exits_with_128_plus_it(capsys, monkeypatch, tiny_toml, tmp_path,
                                                              signame, code):
    """torchrun got the signal and passed it on; the processes saved `last` and rank 0 said so."""
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException

    sigval = getattr(signal, signame)
    got, _, err = _launch_ending_in(monkeypatch, capsys, tiny_toml, tmp_path,
                                    SignalException(f"got signal: {sigval}", sigval=sigval))
    assert got == code, err
    assert err == ("\nlyre: interrupted\n" if signame == "SIGINT" else "")  # rank 0 printed the rest


@pytest.mark.parametrize("exitcodes,code", [({0: 143, 1: 143}, 143), ({0: 143, 1: -15}, 143),
                                            ({0: 130, 1: -9}, 130)])
def test_nproc_processes_stopped_by_a_signal_exit_with_128_plus_it(capsys, monkeypatch, tiny_toml, tmp_path,
                                                                   exitcodes, code):
    """The processes got the signal themselves and stopped; torchrun may have killed the slower
    ones on their way out, after the first had exited."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    failures = {rank: _failure(rank, exitcode, 100) for rank, exitcode in exitcodes.items()}
    got, _, err = _launch_ending_in(monkeypatch, capsys, tiny_toml, tmp_path, ChildFailedError("lyre", failures))
    assert got == code, err


def test_nproc_names_the_process_that_failed_first_not_the_one_stopped_after(capsys, monkeypatch, tiny_toml,
                                                                            tmp_path):
    """Rank 1 failed; torchrun's SIGTERM then stopped rank 0 at the end of its step, which failed
    to reach rank 1 (exit 2) within the same second: torchrun lists rank 1 first."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    failures = {1: _failure(1, 3, 100), 0: _failure(0, 2, 100)}
    code, _, err = _launch_ending_in(monkeypatch, capsys, tiny_toml, tmp_path, ChildFailedError("lyre", failures))
    assert_one_line_error(code, err, r"process rank 1 of 2 failed \(exit code 3\)")
