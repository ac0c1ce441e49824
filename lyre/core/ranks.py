"""Which process of a torchrun job this is, from the environment torchrun sets (torch-free).

    rank()              RANK, 0 outside torchrun
    world_size()        WORLD_SIZE, 1 outside torchrun
    is_main_process()   rank 0 (or a single process): the one that prints and writes
    under_torchrun()    started by torchrun (`--nproc` must not start another)

The one place that reads these variables for the CLI, fine-tuning and their messages, so that
`lyre --help` and the error path need no torch; lyre.train.distributed validates them strictly when
it sets up the process group (env_ranks).
"""

from __future__ import annotations

import os


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, str(default)))
    except ValueError:
        return default  # lyre.train.distributed.env_ranks says what is wrong when training starts


def rank() -> int:
    return _int_env("RANK", 0)


def world_size() -> int:
    return max(1, _int_env("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return rank() == 0


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ
