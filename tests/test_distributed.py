"""Training on several processes, on the CPU with gloo: the same run as one process, checkpoints
that resume anywhere, and a process that dies or hangs stops the whole run with a clear message.

The multi-process runs are slow to start (each process imports torch), so the module starts
them all at once in one fixture and each test then waits for its own.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lyre.cli import main
from lyre.core.errors import LyreError
from lyre.data.corpus import get_batch
from lyre.model import GPT
from lyre.run.checkpoint import load_model_state
from lyre.run.config import load_config
from lyre.train import distributed
from lyre.train.mfu import lookup_peak, mfu
from lyre.train.trainer import train

train_module = importlib.import_module("lyre.train.trainer")  # `lyre.train.trainer` is also the function
REPO = Path(__file__).resolve().parents[1]
# Steps 1-3 of a 6-step schedule: warmup 1, cosine decay over 6 steps, eval at the end.
PART = ["train.max_iters=3", "train.lr_decay_iters=6", "train.warmup_iters=1"]
WHOLE = ["train.max_iters=6", "train.lr_decay_iters=6", "train.warmup_iters=1"]
# Makes rank 1 die (or hang) during step 2; imported at start-up by every process of a launch.
FAULT = textwrap.dedent("""\
    import os
    if os.environ.get("RANK") == "1" and os.environ.get("LYRE_TEST_FAULT"):
        import importlib
        _train = importlib.import_module("lyre.train.trainer")
        _step = _train.Trainer.train_step

        def train_step(self):
            if self.step == 1:
                if os.environ["LYRE_TEST_FAULT"] == "die":
                    os._exit(3)
                import time
                time.sleep(600)
            return _step(self)

        _train.Trainer.train_step = train_step
""")


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launches(tmp_path_factory, tiny_toml):
    """{name: (run_dir, [Popen, ...])} for every multi-process run, all started at once."""
    root = tmp_path_factory.mktemp("distributed")
    (root / "inject").mkdir()
    (root / "inject" / "sitecustomize.py").write_text(FAULT)
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    faulty = {**env, "PYTHONPATH": os.pathsep.join([str(root / "inject"), path])}
    lyre = [sys.executable, "-m", "lyre", "train", "--config", str(tiny_toml), "--no-progress"]

    def start(name: str, args: list[str], environ: dict, nproc: int | None = 2) -> None:
        run_dir = root / name
        command = lyre + (["--nproc", str(nproc)] if nproc else []) + ["--out", str(run_dir), *args]
        if nproc:
            procs = [subprocess.Popen(command, env=environ, cwd=root, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
        else:  # two processes started by hand, as torchrun would, without its supervision
            port = str(_free_port())
            procs = [
                subprocess.Popen(command, cwd=root, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env={**environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                      "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
                for r in range(2)
            ]
        started[name] = (run_dir, procs)

    started: dict = {}
    start("ddp", _sets([*PART, "train.batch_size=2", "train.grad_accum=2"]), env)  # no_sync on micro-step 1
    start("fsdp", _sets([*PART, "train.parallel=fsdp", "train.optimizer=muon"]), env)
    start("dies", _sets([*WHOLE, "train.eval_interval=3", "train.dist_timeout=60"]),
          {**faulty, "LYRE_TEST_FAULT": "die"})
    start("hangs", _sets([*WHOLE, "train.dist_timeout=10"]), {**faulty, "LYRE_TEST_FAULT": "hang"}, nproc=None)
    yield started
    for _, procs in started.values():
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), "a step was logged twice (only rank 0 may log)"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _close(a: dict[int, float], b: dict[int, float]) -> None:
    assert a.keys() == b.keys()
    for step in a:  # the same windows; only the order of float additions differs
        assert a[step] == pytest.approx(b[step], rel=1e-5), step


def test_two_processes_match_one_with_twice_the_batch_and_resume_in_one(launches, tiny_config, tmp_path):
    """2 processes x batch 2 x 2 micro-steps == 1 process x batch 4 x 2 micro-steps, and its
    checkpoint continues in 1 process as if it had been trained there."""
    run_dir, (proc,) = launches["ddp"]
    code, out, err = _finish(proc)
    assert code == 0, err
    assert "global batch 8 = 2 per process x 2 processes x 2 accumulation" in out
    assert out.count("done:") == 1  # rank 0 speaks for the run

    straight = tmp_path / "straight"
    train(tiny_config(*WHOLE, "train.batch_size=4", "train.grad_accum=2"), straight, progress=False, plot=False)
    reference = _losses(straight)
    _close(_losses(run_dir), {s: v for s, v in reference.items() if s <= 3})

    # The 2-process checkpoint, same format, continues in 1 process (batch 4 = the same windows).
    config = load_config(run_dir / "config.json", ["train.batch_size=4", "train.max_iters=6"])
    train(config, run_dir, resume=True, progress=False, plot=False)
    _close(_losses(run_dir), reference)
    resumed, expected = load_model_state(run_dir, "last"), load_model_state(straight, "last")
    assert resumed.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=1e-4, atol=1e-5)


def test_fsdp_with_muon_matches_one_process_and_writes_the_same_checkpoint(launches, tiny_config, tmp_path):
    run_dir, (proc,) = launches["fsdp"]
    code, out, err = _finish(proc)
    assert code == 0, err
    assert "(FSDP, gloo)" in out

    single = tmp_path / "single"
    train(tiny_config(*WHOLE, "train.batch_size=8", "train.optimizer=muon"), single, stop_at=3,
          progress=False, plot=False)
    _close(_losses(run_dir), _losses(single))
    # Gathered on rank 0: the single-process format, tensor for tensor (tied weights once).
    for name in ("model.safetensors", "optimizer.safetensors"):
        with safe_open(run_dir / "checkpoints/last" / name, "pt") as a, \
                safe_open(single / "checkpoints/last" / name, "pt") as b:
            assert sorted(a.keys()) == sorted(b.keys())
            meta_a, meta_b = a.metadata(), b.metadata()
            assert {k: json.loads(v) for k, v in meta_a.items()} == {k: json.loads(v) for k, v in meta_b.items()}
            for key in a.keys():
                torch.testing.assert_close(a.get_tensor(key), b.get_tensor(key), rtol=1e-4, atol=1e-5)


def test_a_process_that_dies_stops_the_run(launches):
    run_dir, (proc,) = launches["dies"]
    code, _, err = _finish(proc)
    assert code == 2
    assert "lyre: error: process rank 1 of 2 failed (exit code 3), so the run was stopped" in err
    assert not (run_dir / "checkpoints").exists()  # it died before the first checkpoint: none


def test_a_process_that_hangs_times_out_with_a_clear_message(launches):
    run_dir, (rank0, rank1) = launches["hangs"]
    code, _, err = _finish(rank0)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("lyre: error: process 0 of 2 lost contact with the others at step 2")
    assert "train.dist_timeout=10s" in last
    rank1.kill()


# ----------------------------------------------------------------------------------------------
# One process: the pieces, and bad input


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.backend=nccl", "needs CUDA GPUs"),
        ("train.backend=mpi", "train.backend must be one of"),
        ("train.parallel=zero3", "train.parallel must be one of"),
        ("train.dist_timeout=0", "dist_timeout must be a positive"),
        ("train.optimizer=sgd", "train.optimizer must be one of"),
        pytest.param("train.device=cuda", "CUDA is not available",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
    ],
)
def test_bad_settings_fail_before_anything_is_written(tmp_path, tiny_config, override, message):
    run_dir = tmp_path / "run"
    with pytest.raises(LyreError, match=message):
        train(tiny_config(override), run_dir, progress=False, plot=False)
    assert not run_dir.exists()


def test_nproc_checks_the_config_before_starting_processes(tmp_path, tiny_toml, capsys, monkeypatch):
    args = ["train", "--nproc", "2", "--config", str(tiny_toml), "--out", str(tmp_path / "run")]
    assert main([*args, "--set", "train.backend=nccl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lyre: error: train.backend=nccl needs CUDA GPUs") and err.count("\n") == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(args) == 2
    assert "under torchrun, drop --nproc" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_out_of_memory_is_one_line_with_the_batch_size(tmp_path, tiny_config, monkeypatch):
    forward, calls = GPT.forward, []

    def out_of_memory(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", out_of_memory)
    run_dir = tmp_path / "run"
    with pytest.raises(LyreError, match=r"out of memory on cpu at step 3 with batch_size=4 x block_size=16") as e:
        train(tiny_config(), run_dir, progress=False, plot=False)
    assert "\n" not in str(e.value) and "train.grad_accum" in str(e.value)
    assert not (run_dir / "checkpoints").exists()


def test_processes_take_their_rows_of_one_global_draw(tiny_config):
    """N processes x batch B read exactly the windows of 1 process x batch N*B."""
    tokens = torch.arange(1000).numpy()
    whole = get_batch(tokens, 6, 8, torch.Generator().manual_seed(3))
    def sampler():  # a task's draw(rows, device), each process with its own generator copy
        generator = torch.Generator().manual_seed(3)
        return lambda rows, device: get_batch(tokens, rows, 8, generator, device)

    parts = [
        distributed.Dist(device=torch.device("cpu"), rank=r, world_size=3).get_batch(sampler(), 2)
        for r in range(3)
    ]
    for i in range(2):
        assert torch.equal(torch.cat([p[i] for p in parts]), whole[i])


def test_a_failed_collective_becomes_a_lyre_error():
    group = distributed.Dist(device=torch.device("cpu"), rank=1, world_size=2, timeout_s=5)
    with pytest.raises(LyreError, match=r"process 1 of 2 lost contact with the others at step 7 "
                                        r"\(Connection closed by peer \[127.0.0.1\]:1234\)"):
        with group.guard(lambda: " at step 7"):
            raise RuntimeError("[../gloo/pair.cc:553] Connection closed by peer [127.0.0.1]:1234. "
                               "This is typically caused by a remote worker crashing.")
    with pytest.raises(RuntimeError, match="shape mismatch"), group.guard():
        raise RuntimeError("shape mismatch")  # not a collective: left alone


def test_mfu_on_the_log_lines_when_the_peak_is_known(tmp_path, tiny_config, monkeypatch):
    assert lookup_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert lookup_peak("NVIDIA H100 PCIe") == 756e12
    assert lookup_peak("NVIDIA H200") == 989e12
    assert lookup_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert lookup_peak("NVIDIA L4") == 121e12
    assert lookup_peak("NVIDIA GeForce RTX 4090") == 165e12
    assert lookup_peak("NVIDIA RTX A1000") is None and lookup_peak("Tesla T4") is None
    assert mfu(1000.0, 6e6, None) is None and mfu(1000.0, 6e6, 12e9) == pytest.approx(0.5)

    plain = train(tiny_config("train.max_iters=2"), tmp_path / "plain", progress=False, plot=False)
    assert not any("mfu" in r for r in plain.history)  # CPU: no known peak, tokens/s only
    monkeypatch.setenv("LYRE_PEAK_FLOPS", "1e9")
    result = train(tiny_config("train.max_iters=2"), tmp_path / "peak", progress=False, plot=False)
    trainer_flops = train_module.model_cost(load_config(tmp_path / "peak" / "config.json").model).flops_per_token
    logged = [r for r in result.history if "tokens_per_s" in r]
    assert logged and all(r["mfu"] == pytest.approx(r["tokens_per_s"] * trainer_flops / 1e9) for r in logged)
