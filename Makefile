# The set-up commands of the README: `make demo`, `make assistant` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned on purpose: an unpinned torch pulls gigabytes of CUDA packages. GPU users override it,
# e.g. `make install TORCH_SPEC="torch"` inside an environment that already has their build.
TORCH_SPEC ?= torch==2.13.0
DEMO_RUN ?= runs/iliad-char
ASSISTANT_BASE ?= runs/iliad-bpe
ASSISTANT_RUN ?= runs/assistant

.PHONY: venv install demo assistant test test-fast bench-smoke lint bench clean browser

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

# From nothing to an assistant in minutes: a small BPE base (context 512) pretrained on the bundled
# Iliad, fine-tuned (SFT) on the bundled instructions (two epochs), then one greedy answer. A toy: it
# learns the form of an answer, not the facts (README: "From the demo to an assistant").
assistant: install
	$(BIN)/lyre train --config iliad-bpe --out $(ASSISTANT_BASE) --force
	$(BIN)/lyre finetune $(ASSISTANT_BASE) --data lyre/data_files/instruction-data.json \
		--out $(ASSISTANT_RUN) --force --set threads=1
	$(BIN)/lyre chat $(ASSISTANT_RUN) -p "What is the opposite of 'dark'?" --temperature 0
	@echo "talk to it: $(BIN)/lyre chat $(ASSISTANT_RUN)"

test: install
	$(BIN)/python -m pytest -rs

# Quick feedback while working: everything but the tests marked slow (processes, torchrun,
# Chromium, PostgreSQL, the bench smoke runs, tests that wait on purpose; tests/conftest.py), on
# every core (pytest-xdist). `make test` runs them all, in one process.
test-fast: install
	$(BIN)/python -m pytest -m "not slow" -n auto

# Every bench/*.py --smoke (tiny sizes, seconds each): the benches still run.
bench-smoke: install
	$(BIN)/python -m pytest tests/test_bench_smoke.py

lint: install
	$(BIN)/ruff check .

# chromium for the browser tests (without it they skip, and `make test` lists why).
browser:
	.ci/install-chromium

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
