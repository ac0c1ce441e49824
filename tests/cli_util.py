"""Helpers for tests that drive the `lyre` command in-process through lyre.cli.main."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lyre.cli import main

WALL_CLOCK = ("tokens_per_s", "ms_per_step", "mfu")  # metrics that differ between any two runs


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `lyre ARGV`; what earlier steps printed is dropped first."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, pattern: str = "", *, ignore: str | None = None) -> None:
    """Exit 2 and one `lyre: error: ...` line matching `pattern`, no traceback. Lines starting
    with `ignore` (progress a command printed before failing) are not counted."""
    lines = [line for line in err.rstrip("\n").splitlines() if not (ignore and line.startswith(ignore))]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("lyre: error: ") and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in lines]
