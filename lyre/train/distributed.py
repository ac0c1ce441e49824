"""Training on many processes with PyTorch's own engine: torchrun, DDP and FSDP2.

`torchrun --nproc_per_node=N -m lyre train ...` (or `lyre train --nproc N`) starts N copies of
the same command; torchrun gives each one RANK, LOCAL_RANK and WORLD_SIZE. The training loop in
lyre.train.trainer is the same for 1 or N processes; this module holds everything that differs:

- Process group: NCCL on CUDA (one GPU per process, cuda:LOCAL_RANK), gloo on CPU. Collectives
  time out after train.dist_timeout seconds, so a process that died or hung ends the whole run
  with a LyreError naming the step, instead of a silent hang.
- Batches: `train.batch_size` is per process; the global batch is batch_size x processes x
  grad_accum. Every process holds the same batch generator (same seed) and, at each micro-step,
  draws the offsets of the whole global batch; process r keeps rows [r*B, (r+1)*B). So N
  processes x batch B see exactly the windows of 1 process x batch N*B, and the generator state
  in a checkpoint means the same thing on any number of processes.
- Other randomness (dropout): process r reseeds from (seed, r) after the model is built (the
  model itself is built from `seed` everywhere, so all processes start identical). Checkpoints
  keep every process's torch RNG state; a resume on another number of processes reseeds
  deterministically from (seed, step, rank).
- DDP (default): gradients are averaged during the backward of the last micro-step only
  (`no_sync` before). Rank 0 alone evaluates, logs and writes checkpoints; the others wait for
  its evaluation record, which is broadcast to them.
- FSDP (train.parallel = "fsdp"): `fully_shard` (FSDP2) on every transformer block and on the
  root, for models whose weights, gradients and optimizer moments do not fit on one device.
  Every process takes part in evaluation (the weights are sharded) and in checkpoints, which
  are gathered into full tensors on rank 0 and written in the single-process format.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from lyre.core.errors import LyreError, first_line
from lyre.core.ranks import is_main_process, under_torchrun  # noqa: F401  (is_main_process re-exported)
from lyre.core.rng import b64_to_tensor, tensor_to_b64
from lyre.core.signals import Stopped

PARALLEL = ("ddp", "fsdp")
BACKENDS = ("auto", "nccl", "gloo")
_T = TypeVar("_T")
# What failed collectives say (gloo and NCCL spell it in many ways; DistError covers the rest).
_COLLECTIVE_FAILURE = re.compile(
    r"gloo|nccl|connection (closed|reset|refused)|timed out|timeout|pair closure|broken pipe"
    r"|processgroup|c10d|socket",
    re.IGNORECASE,
)


def _reason(e: BaseException) -> str:
    """first_line of a collective's error without gloo's file prefix and advice."""
    line = re.sub(r"^\[[^\]]*\] ", "", first_line(e))  # drop gloo's "[/path/to/file.cc:78] " prefix
    return line.split(". This is typically")[0].rstrip(".")  # and gloo's advice that follows


class ReportedByRankZero(LyreError):
    """A LyreError that rank 0 hit and printed; the other processes exit without repeating it."""

    reported_by_rank_zero = True




def env_ranks() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as torchrun sets them; (0, 0, 1) outside torchrun."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise LyreError(
            "RANK, LOCAL_RANK and WORLD_SIZE must be integers; start lyre with torchrun or "
            "`lyre train --nproc N` rather than setting them by hand"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise LyreError(f"invalid process rank {rank} (local {local}) for WORLD_SIZE={world}")
    return rank, local, world


def check_config(cfg, device: torch.device) -> str:
    """Validate train.parallel / backend / dist_timeout for `device`; return the backend name.

    Called before anything is written, so bad input never leaves a half-made run behind.
    """
    if cfg.parallel not in PARALLEL:
        raise LyreError(f"train.parallel must be one of {', '.join(PARALLEL)}; got {cfg.parallel!r}")
    if cfg.backend not in BACKENDS:
        raise LyreError(f"train.backend must be one of {', '.join(BACKENDS)}; got {cfg.backend!r}")
    if not cfg.dist_timeout > 0:
        raise LyreError(f"train.dist_timeout must be a positive number of seconds; got {cfg.dist_timeout}")
    backend = cfg.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available():
        raise LyreError("this PyTorch build has no torch.distributed; install an official build")
    if backend == "nccl":
        if device.type != "cuda":
            raise LyreError(
                f"train.backend=nccl needs CUDA GPUs but training runs on {device.type}; "
                "use train.backend=gloo (or auto)"
            )
        if not dist.is_nccl_available():
            raise LyreError(
                "train.backend=nccl is not available in this PyTorch build; "
                "use train.backend=gloo or install PyTorch with CUDA"
            )
    elif not dist.is_gloo_available():
        raise LyreError("train.backend=gloo is not available in this PyTorch build; use nccl on GPUs")
    return backend


def setup(cfg, device: torch.device) -> Dist:
    """Join the process group torchrun describes (once per process); a no-op outside torchrun.

    On CUDA, process LOCAL_RANK gets GPU cuda:LOCAL_RANK whatever `device` said.
    """
    backend = check_config(cfg, device)
    rank, local, world = env_ranks()
    if world == 1:
        return Dist(device=device, parallel=cfg.parallel, timeout_s=cfg.dist_timeout)
    if device.type == "mps":
        raise LyreError("training on several processes needs CUDA GPUs or the CPU, not MPS")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise LyreError(
                f"process LOCAL_RANK={local} has no GPU: this machine has {count}; "
                f"start at most {count} processes per machine (torchrun --nproc_per_node={count})"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        extra = {"device_id": device} if backend == "nccl" else {}
        try:
            dist.init_process_group(
                backend, timeout=timedelta(seconds=cfg.dist_timeout), rank=rank, world_size=world, **extra
            )
        except Exception as e:  # rendezvous failures come in many exception types
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise LyreError(
                f"could not join the process group (backend {backend}, rank {rank} of {world}, "
                f"master {where}): {_reason(e)}; start every process with the same torchrun "
                "rendezvous (see docs/distributed.md)"
            ) from e
        owns = True
    return Dist(device=device, rank=rank, local_rank=local, world_size=world, backend=backend,
                parallel=cfg.parallel, timeout_s=cfg.dist_timeout, owns_group=owns)


def teardown(d: Dist) -> None:
    """Leave the process group if `d` joined it (never raises: it runs on the way out)."""
    if d.owns_group and dist.is_initialized():
        try:
            # Everyone arrives first, then gloo's worker threads get a moment to free the work
            # they finished: freeing it takes the GIL, and the group's destructor (when the DDP
            # model goes) holds the GIL while it joins those threads. Without the pause, one
            # two-process run in ten hung at exit here (pytorch/pytorch#75097, #179291).
            d.barrier()
            time.sleep(0.2)
            dist.destroy_process_group()
        except Exception:  # a peer that died can make this fail; we are exiting anyway
            pass
        d.owns_group = False


class _Frozen:
    """Stands in for a module or optimizer whose state_dict was already gathered."""

    def __init__(self, state: dict) -> None:
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":  # pinned memory: the copy overlaps with the GPU's work
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass
class Dist:
    """This process's place in the run. world_size == 1 means single-process: every method is
    then a no-op (or the plain single-process behaviour)."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    parallel: str = "ddp"
    timeout_s: float = 1800.0
    owns_group: bool = False
    ddp: nn.Module | None = None  # the DDP wrapper once wrap() made one

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def fsdp(self) -> bool:
        return self.enabled and self.parallel == "fsdp"

    def describe(self) -> str:
        if not self.enabled:
            return f"1 process on {self.device}"
        return f"{self.world_size} processes ({self.parallel.upper()}, {self.backend}) on {self.device.type}"

    # -- collectives ---------------------------------------------------------------------------

    @contextmanager
    def guard(self, where: Callable[[], str] = lambda: "") -> Iterator[None]:
        """Turn a failed collective (a peer died, hung or timed out) into a one-line LyreError."""
        if not self.enabled:
            yield
            return
        try:
            yield
        except LyreError:
            raise
        except Exception as e:
            failed = isinstance(e, getattr(dist, "DistError", ())) or _COLLECTIVE_FAILURE.search(str(e))
            if not failed:
                raise
            raise LyreError(
                f"process {self.rank} of {self.world_size} lost contact with the others{where()} "
                f"({_reason(e)}): another process died or hung (collectives wait at most "
                f"train.dist_timeout={self.timeout_s:g}s) and its own error, if any, is above; "
                "continue from the last checkpoint with --resume"
            ) from e

    def barrier(self) -> None:
        if not self.enabled:
            return
        with self.guard(lambda: " at a barrier"):
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def main_first(self, fn: Callable[[], _T], *, others: bool = True) -> _T | None:
        """Run fn on rank 0, then (if `others`) on the other processes: e.g. rank 0 prepares
        data on disk that the others then load. A LyreError on rank 0 is raised everywhere
        (the others' copy is marked as reported by rank 0, so only rank 0 prints it)."""
        if not self.enabled:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except LyreError as e:
                error = e
        with self.guard(lambda: " while rank 0 prepared the run"):
            message = self.broadcast_object(None if error is None else str(error))
        if error is not None:
            raise error
        if message is not None:
            raise ReportedByRankZero(message)
        if self.is_main or not others:
            return result
        return fn()

    def maximum(self, value: int) -> int:
        """The largest `value` over processes (e.g. the number of a signal that reached only some)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of `t` over processes (in place)."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= self.world_size
        return t

    def broadcast_object(self, obj: _T) -> _T:
        """Rank 0's `obj` on every process (the others pass anything and wait for it)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # -- data ------------------------------------------------------------------------------------

    def get_batch(
        self, draw: Callable[[int, torch.device], tuple[torch.Tensor, ...]], batch_size: int
    ) -> tuple[torch.Tensor, ...]:
        """This process's `batch_size` rows of the global batch that `draw(rows, device)` takes
        (a task's sampler); single-process, exactly draw(batch_size, device). Every process
        draws the whole global batch on the CPU, so the sampler's state stays identical in all
        of them, and keeps its own rows."""
        if not self.enabled:
            return draw(batch_size, self.device)
        batch = draw(batch_size * self.world_size, torch.device("cpu"))
        rows = slice(self.rank * batch_size, (self.rank + 1) * batch_size)
        return tuple(_to_device(t[rows], self.device) for t in batch)

    # -- randomness ------------------------------------------------------------------------------

    def rank_rng_states(self) -> list[dict] | None:
        """Every process's torch (and CUDA) RNG state, on all processes; None when single."""
        if not self.enabled:
            return None
        mine = {"torch": tensor_to_b64(torch.get_rng_state()), "cuda": None}
        if self.device.type == "cuda":
            mine["cuda"] = tensor_to_b64(torch.cuda.get_rng_state(self.device))
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, mine)
        return states

    def seed_ranks(self, seed: int, step: int, saved: list[dict] | None) -> None:
        """Give each process its own random stream (dropout): the saved one when the checkpoint
        came from as many processes, else a fresh one derived from (seed, step, rank)."""
        if not self.enabled:
            return
        if saved and len(saved) == self.world_size:
            mine = saved[self.rank]
            torch.set_rng_state(b64_to_tensor(mine["torch"]))
            if mine.get("cuda") and self.device.type == "cuda":
                torch.cuda.set_rng_state(b64_to_tensor(mine["cuda"]), self.device)
            return
        derived = (seed + 1_000_003 * step + 7919 * self.rank) % 2**63
        random.seed(derived)
        np.random.seed(derived % 2**32)
        torch.manual_seed(derived)

    # -- the model -------------------------------------------------------------------------------

    def shard(
        self, model: nn.Module, optimizer: torch.optim.Optimizer,
        build: Callable[[nn.Module], torch.optim.Optimizer],
    ) -> torch.optim.Optimizer:
        """FSDP: shard `model` in place and return a new optimizer over the shards, holding the
        (possibly resumed, full) state of `optimizer` split the same way. Else `optimizer`."""
        if not self.fsdp:
            return optimizer
        try:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard
            from torch.distributed.tensor import DTensor, distribute_tensor
        except ImportError:
            raise LyreError(
                f"train.parallel=fsdp needs PyTorch >= 2.6 (fully_shard); this is {torch.__version__}; "
                "use train.parallel=ddp or upgrade torch"
            ) from None

        state = optimizer.state_dict()
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        blocks = getattr(getattr(model, "transformer", None), "h", None)
        for block in blocks if blocks is not None else []:
            fully_shard(block, mesh=mesh)  # one all-gather per block, freed after its use
        fully_shard(model, mesh=mesh)  # embeddings, final norm, head
        sharded = build(model)
        if state["state"]:
            params = [p for group in sharded.param_groups for p in group["params"]]
            for index, entry in state["state"].items():
                p = params[index]
                if not isinstance(p, DTensor):
                    continue
                for key, value in entry.items():
                    if isinstance(value, torch.Tensor) and value.ndim and value.shape == p.shape:
                        entry[key] = distribute_tensor(
                            value.to(self.device), p.device_mesh, p.placements, src_data_rank=None
                        )
            sharded.load_state_dict(state)
        return sharded

    def wrap(self, model: nn.Module, compile: bool) -> nn.Module:
        """What training calls for forward passes: `model`, compiled and/or wrapped in DDP."""
        forward = torch.compile(model) if compile else model
        if self.enabled and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.local_rank] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(forward, device_ids=ids)
            forward = self.ddp
        return forward

    def sync_gradients(self, last_micro_step: bool) -> AbstractContextManager:
        """DDP averages gradients during backward; skip that on all but the last micro-step.

        (FSDP reduce-scatters every micro-step: keeping whole gradients would defeat sharding.)
        """
        if self.ddp is not None and not last_micro_step:
            return self.ddp.no_sync()
        return nullcontext()

    def checkpoint_sources(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        """(model, optimizer) to hand to checkpoint.save_checkpoint on rank 0, (None, None) on
        the others. With FSDP every process must call this: it gathers full CPU tensors."""
        if not self.fsdp:
            return (model, optimizer) if self.is_main else (None, None)
        from torch.distributed.tensor import DTensor

        gathered: dict[int, torch.Tensor | None] = {}

        def full(t: torch.Tensor) -> torch.Tensor | None:
            if not isinstance(t, DTensor):
                return t
            if id(t) not in gathered:  # a tied weight is one parameter: gather it once
                whole = t.full_tensor()
                gathered[id(t)] = whole.cpu() if self.is_main else None
            return gathered[id(t)]

        with torch.no_grad():
            weights = {k: full(v) for k, v in model.state_dict(keep_vars=True).items()}
            moments = _map_tensors(optimizer.state_dict(), full)
        if not self.is_main:
            return None, None
        return _Frozen(weights), _Frozen(moments)


def strip_nproc(argv: list[str]) -> list[str]:
    """The command line without `--nproc N` / `--nproc=N`: what each process runs."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--nproc":
            skip = True
        elif not token.startswith("--nproc="):
            out.append(token)
    return out


def launch_command(nproc: int, argv: list[str], config: Any,
                   check_train: Callable[[Any], None]) -> None:
    """`lyre train|finetune --nproc N ...`: the one launcher. Checks the run's config here (its
    [train] section with `check_train`, the optimizer, the parallel settings, the devices), so
    that bad input fails once, before any process starts; then runs the same command line
    without --nproc as N processes of this machine (launch)."""
    from lyre.core.devices import resolve_device
    from lyre.train.optim import check_optimizer_config

    if under_torchrun():
        raise LyreError("--nproc starts torchrun itself; under torchrun, drop --nproc")
    if nproc < 1:
        raise LyreError(f"--nproc must be at least 1; got {nproc}")
    cfg = config.train
    check_train(cfg)
    check_optimizer_config(cfg)
    device = resolve_device(cfg.device)
    check_config(cfg, device)
    if device.type == "mps" and nproc > 1:
        raise LyreError("--nproc needs CUDA GPUs or the CPU (train.device=cpu), not MPS")
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise LyreError(f"--nproc {nproc} but this machine has {torch.cuda.device_count()} GPU(s); "
                        "use one process per GPU (or train.device=cpu)")
    launch(nproc, strip_nproc(argv))


def launch(nproc: int, argv: list[str]) -> None:
    """`lyre train --nproc N ...`: run `python -m lyre ARGV` as N processes with torchrun on this
    machine; a process that fails stops the others and becomes one LyreError here."""
    if nproc < 1:
        raise LyreError(f"--nproc must be at least 1; got {nproc}")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun gives every process 1 thread unless told otherwise; share the cores instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc_per_node={nproc}", "--module", "lyre", *argv]
    )
    try:
        run(args)
    except SignalException as e:
        # torchrun forwarded the signal to every process (each in its own session); on SIGINT
        # or SIGTERM they agreed on a step and saved `last` before stopping (within torchrun's
        # 30 s), and rank 0 said so.
        if e.sigval in (signal.SIGINT, signal.SIGTERM):
            raise Stopped(e.sigval) from None
        raise LyreError(f"stopped by signal {e.sigval.name}; continue from the last checkpoint with --resume") from None
    except ChildFailedError as e:
        # They stopped on Ctrl-C or SIGTERM (130, 143), some perhaps killed by torchrun's own
        # SIGTERM or SIGKILL on their way out, after the first had exited.
        closed = (-signal.SIGTERM, -signal.SIGKILL)
        codes = {f.exitcode for f in e.failures.values() if f.exitcode not in closed}
        if codes in ({128 + signal.SIGINT}, {128 + signal.SIGTERM}):
            raise Stopped(codes.pop() - 128) from None
        # The process that failed first is the cause; the others were stopped (by a signal) or
        # failed because they lost contact with it. Within the same second, the one that torchrun
        # saw first (the failures are in that order): the others may have failed only after
        # torchrun's SIGTERM, which training turns into a stop at the end of the step.
        order = {rank: i for i, rank in enumerate(e.failures)}
        rank, first = min(e.failures.items(), key=lambda kv: (kv[1].exitcode < 0, kv[1].timestamp, order[kv[0]]))
        how = f"exit code {first.exitcode}" if first.exitcode >= 0 else first.message
        raise LyreError(
            f"process rank {rank} of {nproc} failed ({how}), so the run was stopped; its own error, "
            "if it printed one, is above; continue from the last checkpoint with --resume"
        ) from None
