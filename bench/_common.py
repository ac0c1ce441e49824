"""Small helpers shared by the benches: what machine ran them, a timer, the final JSON line."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable


def machine() -> str:
    """One line: CPU model, cores, load average, Python, torch and its thread count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    parts = [cpu, f"{os.cpu_count()} cores"]
    if hasattr(os, "getloadavg"):
        parts.append("load " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    parts.append(f"Python {platform.python_version()}")
    try:
        import torch

        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    except ImportError:
        pass
    return ", ".join(parts)


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Seconds for `repeat` calls of fn."""
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def json_line(record: dict) -> None:
    """The last line of every bench: one JSON object, easy to grep and to paste into docs."""
    print(json.dumps(record), flush=True)


def add_smoke_flag(parser) -> None:
    """--smoke: the bench's own code path at tiny sizes, in seconds, still ending with its JSON
    line (tests/test_bench_smoke.py runs every bench this way so that none rots). Its figures
    mean nothing."""
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, seconds: check that the bench runs (figures mean nothing)")
