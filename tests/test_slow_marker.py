"""The `slow` marker that `make test-fast` leaves out is set by tests/conftest.py, by what a test
does: a test that starts a process (itself or through a helper of its module) is slow, one
that only mentions processes in its docstring is not."""

from __future__ import annotations

import subprocess
import sys

from conftest import SLOW_MODULES, _starts_a_process


def _helper_that_spawns() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def spawns_itself() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def spawns_through_a_helper() -> None:
    _helper_that_spawns()


def only_talks_about_it() -> None:
    """Unlike its neighbours, this never calls subprocess.run or torchrun."""
    assert 1 + 1 == 2


def test_process_starting_tests_are_found_directly_and_through_helpers():
    assert _starts_a_process(spawns_itself)
    assert _starts_a_process(spawns_through_a_helper)
    assert not _starts_a_process(only_talks_about_it)


def test_the_marker_is_registered_and_the_slow_modules_exist(request):
    assert any(line.startswith("slow:") for line in request.config.getini("markers"))
    tests = request.config.rootpath / "tests"
    assert all((tests / f"{name}.py").is_file() for name in SLOW_MODULES)


def test_this_module_is_fast(request):
    assert request.node.get_closest_marker("slow") is None
