# The two commands of the README, plus the rest of the developer loop.
#   make run    the embedded demo (creates .venv, installs the detector)
#   make test   lint, type-check and the whole test suite (creates .venv, installs test deps)
# Every target creates what it needs; nothing has to be installed by hand first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

# The core's tests run twice: on the compiled hot path (when built) and on the pure-Python one.
PURE_TESTS := tests/unit/test_decoders_envoy.py tests/unit/test_flows.py tests/unit/test_fastpath.py tests/pipeline/test_pipeline_core.py

.PHONY: run test system-deps lint typecheck unit bench eval nab notebooks clean help

help:
	@echo "make run | test | lint | typecheck | unit | bench | eval | nab | notebooks | clean"

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
	$(BIN)/ruff check detector tests benchmarks deploy
	$(BIN)/ruff format --check detector

typecheck: $(STAMP)
	$(BIN)/mypy detector

# Debian's prometheus package gives the real `prometheus` and `promtool` the tests run.
system-deps:
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends prometheus; \
	fi

# --nbmake: the notebooks under notebooks/ run too (a cell that raises fails the suite).
test: system-deps lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider --nbmake $(PYTEST_ARGS)
	DETECTOR_PURE_PYTHON=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(PURE_TESTS) $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/property $(PYTEST_ARGS)
	DETECTOR_PURE_PYTHON=1 $(BIN)/python -m pytest -q $(PURE_TESTS) $(PYTEST_ARGS)

# Throughput beside a bare baseline in the same run (figures, never pass/fail): decode and
# aggregate from files (also with 100,000 distinct edges), replay with and without scoring (and
# scoring's cost per window; then at the evaluation's size: 12 h of test traffic, 1.1M records), the Kafka path, the webhook outbox, one replica beside two (without and with shared scoring).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_file.py
	$(BIN)/python benchmarks/bench_file.py --edges 100000 --formats envoy_json --modes core,run
	$(BIN)/python benchmarks/bench_replay.py
	$(BIN)/python benchmarks/bench_replay.py --train-hours 48 --test-hours 12 --keep build/bench-replay --modes aggregate,replay
	$(BIN)/python benchmarks/bench_kafka.py
	$(BIN)/python benchmarks/bench_outbox.py
	$(BIN)/python benchmarks/bench_scaleout.py
	$(BIN)/python benchmarks/bench_scaleout.py --score --rounds 5

# The labelled evaluation: simulate 48 h of training and 12 h of test traffic with attacks and
# traps, train, replay, and score the findings per scenario (about 10 minutes on 2 cores).
EVAL_DIR ?= build/eval
eval: $(STAMP)
	rm -rf $(EVAL_DIR)
	$(BIN)/detector simulate --out $(EVAL_DIR)/sim --train-hours 48 --test-hours 12
	$(BIN)/detector train --cluster-from-filename --input $(EVAL_DIR)/sim/train --out $(EVAL_DIR)/models
	$(BIN)/detector replay --cluster-from-filename --model $(EVAL_DIR)/models --input $(EVAL_DIR)/sim/test --out $(EVAL_DIR)/replay
	$(BIN)/detector evaluate --labels $(EVAL_DIR)/sim/test/labels.jsonl --findings $(EVAL_DIR)/replay/findings.jsonl

# The seasonal/volume model as a NAB detector, scored by our own NAB scorer (which first
# reproduces the published windowedGaussian numbers).
nab: $(STAMP)
	$(BIN)/python -m detector.nab

# Re-execute the notebooks and write them back with their outputs (plots included): about two
# and a half minutes on 2 cores; they need ../shared/benchmarks/nab beside the repository.
notebooks: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --nbmake --overwrite notebooks

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
