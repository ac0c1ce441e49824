# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned on purpose: an unpinned torch pulls gigabytes of CUDA packages. GPU users override it,
# e.g. `make install TORCH_SPEC="torch"` inside an environment that already has their build.
TORCH_SPEC ?= torch==2.13.0
DEMO_RUN ?= runs/iliad-char

.PHONY: venv install demo test test-fast bench-smoke lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/python
install: $(VENV)/.installed

demo: install
	$(BIN)/lyre train --config iliad-char --out $(DEMO_RUN) --force
	$(BIN)/lyre sample $(DEMO_RUN) --prompt "Sing, O goddess, " --max-new-tokens 400 --seed 1337

test: install
	$(BIN)/python -m pytest

# Quick feedback while working: everything but the tests marked slow (processes, torchrun,
# Chromium, PostgreSQL, the bench smoke runs; tests/conftest.py). `make test` runs them all.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# Every bench/*.py --smoke (tiny sizes, seconds each): the benches still run.
bench-smoke: install
	$(BIN)/python -m pytest tests/test_bench_smoke.py

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
