# Two commands matter (see README):  make up  (set up and run the embedded default)
#                                    make test (set up, lint, and run every test; what CI runs)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUF := protos/node_modules/.bin/buf

.PHONY: up test lint typecheck protos protos-check setup clean

setup: $(STAMP) $(BUF)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

$(BUF): protos/package.json protos/package-lock.json
	npm ci --prefix protos --no-audit --no-fund --loglevel=error
	touch $(BUF)

up: $(STAMP)
	$(BIN)/maestro up

protos: $(STAMP)
	$(BIN)/python protos/build.py generate

protos-check: $(STAMP) $(BUF)
	$(BIN)/python protos/build.py check
	$(BIN)/python protos/build.py lint

lint: $(STAMP) protos-check
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) protos/node_modules .mypy_cache .ruff_cache
