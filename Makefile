# The commands people type. CI runs `make check` and `make test` too.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install run test test-fast check lint format typecheck asyncapi asyncapi-cli bench \
        mosquitto clean

help:
	@echo "make run        start broker + controller + cloud agent (edgeplane up)"
	@echo "make test       the whole test suite against a private mosquitto"
	@echo "make check      ruff (lint + format), mypy --strict and the AsyncAPI validator"
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

# The official AsyncAPI validator on docs/asyncapi.yaml (tests/test_asyncapi.py checks the
# document against the code). Its pinned npm install lives in .tools/asyncapi and is made
# here when missing or when scripts/asyncapi-cli/package-lock.json changed, as the venv is.
ASYNCAPI_STAMP := .tools/asyncapi/.installed

$(ASYNCAPI_STAMP): scripts/asyncapi-cli/package.json scripts/asyncapi-cli/package-lock.json
	scripts/asyncapi install

asyncapi-cli: $(ASYNCAPI_STAMP)

asyncapi: $(ASYNCAPI_STAMP)
	scripts/asyncapi validate

check: lint typecheck asyncapi

bench: $(STAMP) mosquitto
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis
