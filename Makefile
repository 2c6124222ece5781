# The two set-up commands of the README. Each creates .venv if needed and installs from pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test test-slow lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	$(BIN)/affsweep run sweeps/demo.yaml

# two test processes (pytest-xdist; a file stays in one, so its module fixtures start once), then the
# tests that must run alone
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n 2 --dist loadfile -m "(not slow or ci) and not alone" $(PYTEST_ARGS)
	$(BIN)/pytest -q -m "ci and alone" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf runs .pytest_cache
