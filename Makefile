# One command per chore. Each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
PACKAGES := ccat_buffering ccat_buffering_memory ccat_buffering_redis

.PHONY: demo test lint typecheck pytest docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: run a site through an outage on the embedded default (memory + SQLite)
demo: $(STAMP)
	$(BIN)/ccat-buffering simulate

## test: lint, type check and the whole test suite
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff format --check $(PACKAGES) tests bench
	$(BIN)/ruff check $(PACKAGES) tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The console's browser tests drive Debian's Chromium through Playwright (root, as CI runs).
CHROMIUM ?= /usr/bin/chromium

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

pytest: $(STAMP) $(CHROMIUM)
	$(BIN)/pytest -q

## docs: build the documentation, warnings as errors
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

## bench: run the benchmarks, print their ratios and regenerate docs/_bench_results.rst
bench: $(STAMP)
	cd bench && ../$(BIN)/python run.py --rst ../docs/_bench_results.rst

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .mypy_cache .ruff_cache
