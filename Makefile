# The one command surface: people and CI call these targets.
# `make demo` and `make test` work on a fresh machine with only Python 3.11+ installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install demo test test-fast lint format typecheck check bench bench-fairness bench-http flower worker clean

help:
	@echo "make demo       install, start Redis + workers, run a multi-tenant workload, print a summary"
	@echo "make test       install and run the whole test suite (starts what it needs)"
	@echo "make lint       ruff check + format check;  make typecheck  mypy"
	@echo "make bench      benchmarks: runtime vs bare Celery on SQLite and PostgreSQL, ledger vs plain INCR"
	@echo "make bench-fairness  a small tenant behind a flood vs a FIFO queue, dispatch cost"
	@echo "make bench-http  HTTP submit p50/p99 at 200 req/s (worker running) vs Runtime.submit and bare apply_async"
	@echo "make worker     start a worker;  make flower  Flower on the same broker"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "agentrt needs Python 3.11+; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/agentrt demo

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python tests/services.py ensure
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check runtime tasks tests bench examples
	$(BIN)/ruff format --check runtime tasks tests bench examples
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff format runtime tasks tests bench examples
	$(BIN)/ruff check --fix runtime tasks tests bench examples

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

bench: install
	$(BIN)/python bench/run.py

bench-fairness: install
	$(BIN)/python bench/fairness.py

# -m: run as bench/http.py, its folder would shadow the standard library's http package
bench-http: install
	$(BIN)/python -m bench.http

worker: install
	$(BIN)/agentrt worker

flower: install
	$(BIN)/agentrt flower

clean:
	rm -rf .agentrt .pytest_cache .mypy_cache .ruff_cache
