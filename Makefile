# Two commands matter (see README):  make up  (set up and run the embedded default)
#                                    make test (set up, lint, and run every test; what CI runs)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUF := protos/node_modules/.bin/buf
# The serving lane (Ray Serve + vLLM) runs in its own venv: vLLM pins its own torch, transformers
# and openai, which must not constrain the control plane's. The .pth file puts the repo root on
# its path, so `serving` imports in the launcher and in every Ray worker it starts.
SERVING_VENV := .venv-serving
SERVING_STAMP := $(SERVING_VENV)/.installed

.PHONY: up test lint typecheck protos protos-check setup serving-setup clean

setup: $(STAMP) $(BUF) $(SERVING_STAMP)

serving-setup: $(SERVING_STAMP)

$(SERVING_STAMP): serving/requirements.lock
	$(PYTHON) -m venv $(SERVING_VENV)
	$(SERVING_VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
		-r serving/requirements.lock
	echo "$(CURDIR)" > $$($(SERVING_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/maestro-serving.pth
	touch $(SERVING_STAMP)

# The lock is complete (every transitive dependency, hashed), so pip installs it as listed without
# resolving (`--no-deps`) and `pip check` proves nothing is missing. Resolving would let the bundled
# pip try an unpinned newer release for an extra (litellm's `httpx[http2]`) and refuse it.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements.lock
	$(BIN)/pip check
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

$(BUF): protos/package.json protos/package-lock.json
	npm ci --prefix protos --no-audit --no-fund --loglevel=error
	touch $(BUF)

up: $(STAMP)
	$(BIN)/maestro up

protos: $(STAMP)
	$(BIN)/python protos/build.py generate

# `breaking` compares with the protos of HEAD~1; a clone without it (shallow) skips that step.
protos-check: $(STAMP) $(BUF)
	$(BIN)/python protos/build.py check
	$(BIN)/python protos/build.py lint
	$(BIN)/python protos/build.py breaking

lint: $(STAMP) protos-check
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# The suite runs twice: on SQLite (the embedded default), then with every test server's store in
# PostgreSQL (MAESTRO_TEST_STORE=postgres; tests that name their store keep it). The second pass
# leaves out the serving lane's tests, which start Ray and vLLM for minutes and use the same
# server fixture as the rest.
test: lint $(SERVING_STAMP)
	$(BIN)/pytest
	MAESTRO_TEST_STORE=postgres $(BIN)/pytest --ignore=tests/test_serving_lane.py \
		--ignore=tests/test_serving_placement.py

clean:
	rm -rf $(VENV) $(SERVING_VENV) protos/node_modules .mypy_cache .ruff_cache
