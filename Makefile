# The two commands of the README, plus the rest of the developer loop.
#   make run    the embedded demo (creates .venv, installs the detector)
#   make test   lint, type-check and the whole test suite (creates .venv, installs test deps)
# Every target creates what it needs; nothing has to be installed by hand first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: run test lint typecheck unit bench clean help

help:
	@echo "make run | test | lint | typecheck | bench | clean"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "detector needs Python >= 3.11 (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/detector run

lint: $(STAMP)
	$(BIN)/ruff check detector tests benchmarks
	$(BIN)/ruff format --check detector

typecheck: $(STAMP)
	$(BIN)/mypy detector

test: lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/property $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_file.py
	$(BIN)/python benchmarks/bench_kafka.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
