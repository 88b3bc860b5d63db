# The commands people type. CI runs `make check` and `make test` too.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install run test test-fast check lint format typecheck bench mosquitto clean

help:
	@echo "make run        start broker + controller + cloud agent (edgeplane up)"
	@echo "make test       the whole test suite against a private mosquitto"
	@echo "make check      ruff (lint + format) and mypy --strict"
	@echo "make bench      the benchmarks under bench/ (prints numbers and ratios)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || scripts/system-deps venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Tests need a mosquitto binary; install Debian's package when it is missing.
mosquitto:
	@scripts/system-deps mosquitto

run: $(STAMP)
	$(BIN)/edgeplane up

test: $(STAMP) mosquitto
	$(BIN)/pytest

test-fast: $(STAMP) mosquitto
	$(BIN)/pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# mypy maps module names to folders; ours install under another name (edgeplane.*), so it
# checks them through links named as installed.
TYPECHECK_TREE := build/typecheck/edgeplane

typecheck: $(STAMP)
	@mkdir -p $(TYPECHECK_TREE)
	@for pkg in controller edge_agent shared; do ln -sfn ../../../$$pkg $(TYPECHECK_TREE)/$$pkg; done
	$(BIN)/mypy

check: lint typecheck

bench: $(STAMP) mosquitto
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
