"""Checkpoints: round trips, exact resume, crash safety and clear errors on bad files."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

import lyre.run.checkpoint as ckpt
from lyre.core.errors import LyreError
from lyre.core.io import atomic_write_text
from lyre.core.rng import capture_rng_state, restore_rng_state
from lyre.run.checkpoint import (
    checkpoint_exists,
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)

VOCAB, DIM = 11, 8


class TinyLM(nn.Module):
    """Embedding -> LayerNorm -> dropout -> lm_head, with the head tied to the embedding."""

    def __init__(self, vocab: int = VOCAB, dim: int = DIM, tie: bool = True):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.ln = nn.LayerNorm(dim)
        self.drop = nn.Dropout(0.1)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.drop(self.ln(self.wte(idx))))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def make(seed: int, **kwargs) -> tuple[TinyLM, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = TinyLM(**kwargs)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, n: int):
    """n AdamW steps on batches drawn from `gen`; dropout uses the global torch RNG."""
    model.train()
    for _ in range(n):
        x = torch.randint(0, VOCAB, (4, 5), generator=gen)
        loss = model(x, (x + 1) % VOCAB)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ----------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("tie", [True, False])
def test_weights_round_trip(tmp_path: Path, tie: bool):
    src, _ = make(0, tie=tie)
    path = save_checkpoint(tmp_path, "last", model=src, optimizer=None, state={"step": 7})
    assert path == tmp_path / "checkpoints" / "last"
    dst, _ = make(1, tie=tie)
    state = load_checkpoint(tmp_path, "last", model=dst)
    assert state == {"step": 7}
    assert_same_weights(src, dst)
    assert (dst.lm_head.weight is dst.wte.weight) == tie


def test_tied_weight_is_stored_once(tmp_path: Path):
    model, _ = make(0)
    save_checkpoint(tmp_path, "last", model=model, optimizer=None, state={})
    with safe_open(str(tmp_path / "checkpoints/last/model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["ln.bias", "ln.weight", "wte.weight"]
    weights = load_model_state(tmp_path, "last")
    assert weights["lm_head.weight"] is weights["wte.weight"]
    # After loading, training one tied parameter still moves the other.
    fresh, opt = make(1)
    load_checkpoint(tmp_path, model=fresh)
    train_steps(fresh, opt, torch.Generator().manual_seed(0), 1)
    assert fresh.lm_head.weight is fresh.wte.weight


def test_views_of_one_storage_round_trip(tmp_path: Path):
    """Parameters that are different slices of one buffer are saved as separate copies."""

    class Sliced(nn.Module):
        def __init__(self):
            super().__init__()
            base = torch.randn(4, 3)
            self.a = nn.Parameter(base[:2])
            self.b = nn.Parameter(base[2:])

    src = Sliced()
    save_checkpoint(tmp_path, "last", model=src, optimizer=None, state={})
    dst = Sliced()
    load_checkpoint(tmp_path, model=dst)
    assert_same_weights(src, dst)


def test_compiled_wrapper_keys_are_unwrapped(tmp_path: Path):
    """torch.compile's wrapper keeps the real model in `_orig_mod`; store its plain keys."""

    class Wrapper(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self._orig_mod = inner

    src, _ = make(0)
    save_checkpoint(tmp_path, "last", model=Wrapper(src), optimizer=None, state={})
    assert "wte.weight" in load_model_state(tmp_path)
    dst, _ = make(1)
    load_checkpoint(tmp_path, model=dst)
    assert_same_weights(src, dst)


def test_resume_is_bit_identical(tmp_path: Path):
    """3 steps, save, 3 more == 3 steps, save, reload everything into fresh objects, 3 more."""
    model, opt = make(0)
    gen = torch.Generator().manual_seed(1234)
    train_steps(model, opt, gen, 3)
    state = {"step": 3, "rng": capture_rng_state({"data": gen})}
    save_checkpoint(tmp_path, "last", model=model, optimizer=opt, state=state)
    train_steps(model, opt, gen, 3)

    torch.manual_seed(999)  # scramble the global RNG that dropout uses
    resumed, resumed_opt = make(42)
    resumed_gen = torch.Generator().manual_seed(5)
    loaded = load_checkpoint(tmp_path, "last", model=resumed, optimizer=resumed_opt)
    assert loaded["step"] == 3
    restore_rng_state(loaded["rng"], {"data": resumed_gen})
    train_steps(resumed, resumed_opt, resumed_gen, 3)

    assert_same_weights(model, resumed)
    assert resumed.lm_head.weight is resumed.wte.weight
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        for key, value in opt.state[p].items():
            assert torch.equal(value, resumed_opt.state[q][key]), key
    assert resumed_opt.param_groups[0]["betas"] == opt.param_groups[0]["betas"]
    assert isinstance(resumed_opt.param_groups[0]["betas"], tuple)


def test_optimizer_tensors_are_flat_named(tmp_path: Path):
    model, opt = make(0)
    train_steps(model, opt, torch.Generator().manual_seed(0), 1)
    save_checkpoint(tmp_path, "last", model=model, optimizer=opt, state={})
    with safe_open(str(tmp_path / "checkpoints/last/optimizer.safetensors"), framework="pt") as f:
        assert "state.0.exp_avg" in f.keys()
        assert "state.0.exp_avg_sq" in f.keys()


def test_rng_round_trip():
    gen = torch.Generator().manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()
    saved = capture_rng_state({"data": gen})
    json.dumps(saved)  # JSON-safe

    def draw():
        return (
            torch.randn(5),
            [random.random(), random.gauss(0, 1)],
            np.random.standard_normal(3),
            torch.randint(0, 1000, (5,), generator=gen),
        )

    first = draw()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    gen.manual_seed(0)
    restore_rng_state(json.loads(json.dumps(saved)), {"data": gen})
    second = draw()
    assert torch.equal(first[0], second[0])
    assert first[1] == second[1]
    assert np.array_equal(first[2], second[2])
    assert torch.equal(first[3], second[3])


def test_rng_missing_generator_and_garbage():
    saved = capture_rng_state(None)
    with pytest.raises(LyreError, match="generator 'data'"):
        restore_rng_state(saved, {"data": torch.Generator()})
    with pytest.raises(LyreError, match="invalid RNG state"):
        restore_rng_state({**saved, "torch": "not base64!"})


def test_state_json_records_format_and_checksums(tmp_path: Path):
    model, opt = make(0)
    save_checkpoint(tmp_path, "best", model=model, optimizer=opt, state={"best_val_loss": 1.5})
    header = json.loads((tmp_path / "checkpoints/best/state.json").read_text())
    assert header["format"] == "lyre-checkpoint" and header["version"] == 1
    assert set(header["files"]) == {"model.safetensors", "optimizer.safetensors"}
    record = header["files"]["model.safetensors"]
    assert record["bytes"] == (tmp_path / "checkpoints/best/model.safetensors").stat().st_size
    assert len(record["sha256"]) == 64
    assert header["state"] == {"best_val_loss": 1.5}


def test_exists_and_latest_go_by_step_not_file_time(tmp_path: Path):
    """After `cp -r`, an older `best` can carry a newer file time: the step decides, `last` wins
    a tie, and a checkpoint whose state cannot be read is passed over."""
    assert latest_checkpoint(tmp_path) is None
    assert not checkpoint_exists(tmp_path, "last")
    model, _ = make(0)
    save_checkpoint(tmp_path, "best", model=model, optimizer=None, state={"step": 200})
    save_checkpoint(tmp_path, "last", model=model, optimizer=None, state={"step": 600})
    assert checkpoint_exists(tmp_path, "best") and checkpoint_exists(tmp_path, "last")
    state_file = tmp_path / "checkpoints/best/state.json"
    later = state_file.stat().st_mtime + 3600
    os.utime(state_file, (later, later))
    assert latest_checkpoint(tmp_path) == "last"
    save_checkpoint(tmp_path, "best", model=model, optimizer=None, state={"step": 600})
    assert latest_checkpoint(tmp_path) == "last"
    save_checkpoint(tmp_path, "best", model=model, optimizer=None, state={"step": 700})
    assert latest_checkpoint(tmp_path) == "best"
    (tmp_path / "checkpoints/best/state.json").write_text("{not json")
    assert latest_checkpoint(tmp_path) == "last"  # the readable one, though its step is lower


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_respect_the_umask(tmp_path: Path, umask: int):
    """Files and directories come out as an ordinary open()/mkdir would make them, not 0600."""
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.json", "{}")
        model, _ = make(0)
        save_checkpoint(tmp_path, "last", model=model, optimizer=None, state={"step": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask
    for path in (tmp_path / "checkpoints/last").iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "checkpoints/last").stat().st_mode & 0o777 == 0o777 & ~umask


def test_atomic_write_text(tmp_path: Path):
    target = tmp_path / "sub" / "config.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["config.json"]


# ----------------------------------------------------------------------------------------------
# Crash safety


def test_half_written_tmp_is_ignored_and_replaced(tmp_path: Path):
    model, _ = make(0)
    save_checkpoint(tmp_path, "last", model=model, optimizer=None, state={"step": 1})
    tmp = tmp_path / "checkpoints" / "last.tmp"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"\x00\x01half")
    assert load_checkpoint(tmp_path, "last", model=make(1)[0]) == {"step": 1}
    assert latest_checkpoint(tmp_path) == "last"
    save_checkpoint(tmp_path, "last", model=model, optimizer=None, state={"step": 2})
    assert not tmp.exists()
    assert load_checkpoint(tmp_path, "last") == {"step": 2}


def test_lone_old_is_used(tmp_path: Path):
    model, _ = make(0)
    save_checkpoint(tmp_path, "last", model=model, optimizer=None, state={"step": 1})
    root = tmp_path / "checkpoints"
    (root / "last").rename(root / "last.old")
    assert checkpoint_exists(tmp_path, "last")
    assert latest_checkpoint(tmp_path) == "last"
    fresh, _ = make(1)
    assert load_checkpoint(tmp_path, "last", model=fresh) == {"step": 1}
    assert_same_weights(model, fresh)
    save_checkpoint(tmp_path, "last", model=model, optimizer=None, state={"step": 2})
    assert sorted(p.name for p in root.iterdir()) == ["last"]


def test_writer_killed_between_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Die after NAME -> NAME.old but before NAME.tmp -> NAME: the old checkpoint survives."""
    model, _ = make(0)
    save_checkpoint(tmp_path, "last", model=model, optimizer=None, state={"step": 1})
    real_rename = Path.rename

    def rename(self: Path, target):
        if self.name == "last.tmp":
            raise KeyboardInterrupt  # the process is killed here
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "last", model=model, optimizer=None, state={"step": 2})
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["last.old", "last.tmp"]
    assert load_checkpoint(tmp_path, "last") == {"step": 1}
    save_checkpoint(tmp_path, "last", model=model, optimizer=None, state={"step": 3})
    assert sorted(p.name for p in root.iterdir()) == ["last"]
    assert load_checkpoint(tmp_path, "last") == {"step": 3}


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model, opt = make(0)
    save_checkpoint(tmp_path, "last", model=model, optimizer=opt, state={"step": 1})
    return tmp_path / "checkpoints" / "last"


def test_truncated_model_file(tmp_path: Path, saved: Path):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(LyreError, match=r"model\.safetensors is truncated"):
        load_checkpoint(tmp_path, model=make(1)[0])


def test_flipped_byte_in_model_file(tmp_path: Path, saved: Path):
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LyreError, match=r"model\.safetensors is corrupt \(sha256"):
        load_model_state(tmp_path)


def test_bad_safetensors_header(tmp_path: Path, saved: Path):
    """Even with a matching checksum, a broken header is reported, naming the file."""
    path = saved / "optimizer.safetensors"
    garbage = b"\xff" * 64
    path.write_bytes(garbage)
    header = json.loads((saved / "state.json").read_text())
    header["files"]["optimizer.safetensors"] = ckpt._file_record(garbage)
    (saved / "state.json").write_text(json.dumps(header))
    model, opt = make(1)
    with pytest.raises(LyreError, match=r"optimizer\.safetensors is not a readable safetensors file"
                                         r" \(.*\); delete that checkpoint"):
        load_checkpoint(tmp_path, model=model, optimizer=opt)


def test_corrupt_state_json(tmp_path: Path, saved: Path):
    (saved / "state.json").write_text('{"format": "lyre-checkpoint", "ver')
    with pytest.raises(LyreError, match=r"state\.json is corrupt"):
        load_checkpoint(tmp_path)


def test_missing_run_dir_and_no_checkpoints(tmp_path: Path):
    with pytest.raises(LyreError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(LyreError, match="no checkpoint in .*train first with `lyre train`"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "last.tmp").mkdir(parents=True)
    with pytest.raises(LyreError, match="no checkpoint in"):
        load_checkpoint(tmp_path)


def test_unknown_name_lists_available(tmp_path: Path, saved: Path):
    with pytest.raises(LyreError, match="no checkpoint 'best'.*available: last"):
        load_checkpoint(tmp_path, "best")
    with pytest.raises(LyreError, match="invalid checkpoint name"):
        load_checkpoint(tmp_path, "last.old")


def test_shape_mismatch_names_key(tmp_path: Path, saved: Path):
    bigger = TinyLM(dim=DIM * 2)
    with pytest.raises(
        LyreError, match=r"'wte\.weight' has shape \(11, 8\) but the model expects \(11, 16\)"
    ):
        load_checkpoint(tmp_path, model=bigger)


def test_missing_key(tmp_path: Path, saved: Path):
    class WithBias(TinyLM):
        def __init__(self):
            super().__init__()
            self.extra = nn.Parameter(torch.zeros(3))

    with pytest.raises(LyreError, match="has no tensor 'extra'"):
        load_checkpoint(tmp_path, model=WithBias())


def test_optimizer_missing_or_mismatched(tmp_path: Path):
    model, opt = make(0)
    save_checkpoint(tmp_path, "noopt", model=model, optimizer=None, state={})
    assert not (tmp_path / "checkpoints/noopt/optimizer.safetensors").exists()
    with pytest.raises(LyreError, match="no optimizer.safetensors"):
        load_checkpoint(tmp_path, "noopt", optimizer=opt)
    train_steps(model, opt, torch.Generator().manual_seed(0), 1)
    save_checkpoint(tmp_path, "last", model=model, optimizer=opt, state={})
    other = torch.optim.AdamW([nn.Parameter(torch.zeros(2))])
    with pytest.raises(LyreError, match="does not fit this optimizer"):
        load_checkpoint(tmp_path, "last", optimizer=other)


def test_no_pickle_anywhere(saved: Path):
    source = Path(ckpt.__file__).read_text()
    for banned in ("import pickle", "torch.save(", "torch.load(", "pickle.load"):
        assert banned not in source
    for path in saved.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), path  # pickle protocol 2+ magic


def test_one_owner_for_writes_rng_safetensors_reading_and_the_cache():
    """Issue 19.10: checkpoint.py re-exported io's writers and rng's functions (hiding their
    owners); two modules read safetensors files, two computed lyre's cache directory."""
    import lyre

    for name in ("atomic_write_bytes", "atomic_write_text", "capture_rng_state", "restore_rng_state"):
        assert not hasattr(ckpt, name), name
    root = Path(lyre.__file__).parent
    sources = {str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in root.rglob("*.py")}
    assert [name for name, text in sources.items() if "safe_open(" in text] == ["core/io.py"]
    assert [name for name, text in sources.items() if "XDG_CACHE_HOME" in text] == ["core/io.py"]


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    from lyre.core.io import cache_dir

    monkeypatch.setenv("LYRE_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("LYRE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lyre"


def test_run_files_are_joined_through_rundir():
    """RunDir owns a run's layout: outside it, "config.json" is spelled only by the modules that
    read or write Hugging Face directories (whose config.json is theirs, not a run's)."""
    import lyre

    root = Path(lyre.__file__).parent
    elsewhere = ("run/rundir.py", "hf/", "classify/export.py", "finetune/base.py")
    spelled = [str(p.relative_to(root)) for p in root.rglob("*.py")
               if '"config.json"' in p.read_text(encoding="utf-8")]
    assert [name for name in spelled if not name.startswith(elsewhere)] == []
