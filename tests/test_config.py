"""Presets and overrides: every key checked, every type checked."""

from pathlib import Path

import pytest

from lyre.config import RunConfig, config_from_json, load_config, save_config
from lyre.errors import LyreError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("preset", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_preset_loads(preset):
    config = load_config(preset)
    assert isinstance(config, RunConfig)


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
