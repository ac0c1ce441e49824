"""Presets and overrides: every key checked, every type checked."""

import tomllib
from pathlib import Path

import pytest

import lyre
from lyre.core.errors import LyreError
from lyre.run.config import (
    PRESETS_DIR,
    RunConfig,
    config_from_json,
    list_presets,
    load_config,
    resolve_preset,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]
PRESET_FILES = sorted(PRESETS_DIR.glob("*.toml"))
NAMES = ["calculator-base", "gpt2-124m", "gpt2-large", "gpt2-medium", "gpt2-xl", "iliad-bpe", "iliad-char", "iliad-gru", "iliad-lstm",
         "iliad-rnn", "seq2seq-dates", "shakespeare-char", "shakespeare-char-cpu"]


def test_the_presets_are_listed_by_name():
    assert list(list_presets()) == NAMES
    assert sorted(list_presets().values()) == PRESET_FILES


@pytest.mark.parametrize("preset", PRESET_FILES, ids=lambda p: p.stem)
def test_every_preset_loads(preset):
    config = load_config(preset)
    assert isinstance(config, RunConfig)
    assert load_config(preset.stem) == config
    assert preset.read_text().startswith("# "), "`lyre presets` shows the first comment line"


def test_the_presets_are_package_data():
    """A wheel holds what [tool.setuptools.package-data] globs (relative to lyre/): every preset
    must match, or `--config NAME` fails for everyone who pip-installed lyre."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["lyre"]
    package = Path(lyre.__file__).parent
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    assert PRESET_FILES and set(PRESET_FILES) <= shipped


@pytest.mark.parametrize("name", ["iliad-char", "iliad-char.toml"])
def test_a_preset_by_name(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # names work from any directory
    assert resolve_preset(name) == PRESETS_DIR / "iliad-char.toml"


def test_a_file_wins_over_a_preset_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "iliad-char.toml").write_text("[model]\nn_layer = 7\n")
    assert resolve_preset("iliad-char.toml") == Path("iliad-char.toml")
    assert load_config("iliad-char.toml").model.n_layer == 7
    assert load_config("iliad-char").model.n_layer == 2  # no file of that exact name: the preset


@pytest.mark.parametrize(
    "config,pattern",
    [
        ("nope", "no config file or preset named 'nope'"),
        ("nope.toml", "no config file or preset named 'nope.toml'"),
        ("sub/iliad-char", "config file sub/iliad-char not found; did you mean the bundled preset iliad-char"),
        ("configs/iliad-char.toml", "config file configs/iliad-char.toml not found"),
    ],
)
def test_unknown_preset_lists_the_presets(tmp_path, monkeypatch, config, pattern):
    """A name with a directory part is a path, never a preset."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LyreError, match=pattern) as error:
        load_config(config)
    assert ", ".join(NAMES) in str(error.value) and "\n" not in str(error.value)


def test_overrides_with_and_without_section():
    config = load_config(None, ["train.lr=3e-4", "n_layer=6", "pos=rope", "compile=true",
                                "data.corpus=a.txt"])
    assert config.train.lr == 3e-4
    assert config.model.n_layer == 6
    assert config.model.pos == "rope"
    assert config.train.compile is True
    assert config.data.corpus == ["a.txt"]


def test_int_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override,msg",
    [
        ("train.nope=1", "unknown config key"),
        ("nope=1", "unknown config key"),
        ("bogus.lr=1", "unknown config section"),
        ("n_layer=three", "expected int"),
        ("n_layer=2.5", "expected int"),
        ("compile=1", "true or false"),
        ("lr", "key=value"),
        ("n_embd=100", "divisible"),
    ],
)
def test_bad_overrides(override, msg):
    with pytest.raises(LyreError, match=msg):
        load_config(None, [override])


def test_unknown_key_in_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nn_layers = 4\n")
    with pytest.raises(LyreError, match="unknown key"):
        load_config(path)


def test_invalid_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model\n")
    with pytest.raises(LyreError, match="not valid TOML"):
        load_config(path)


def test_missing_file():
    with pytest.raises(LyreError, match="not found"):
        load_config("does/not/exist.toml")


def test_round_trip_through_json(tmp_path):
    config = load_config(None, ["n_layer=3", "lr=0.01"])
    save_config(config, tmp_path / "config.json")
    assert config_from_json(tmp_path / "config.json") == config
