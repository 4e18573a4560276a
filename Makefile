# mwl-broker: `make run` starts the broker on the embedded default; `make test` runs
# the checks and the whole test suite (installing what the tests need).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-services lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mwl-broker serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# DCMTK (the modality in integration tests), PostgreSQL, Redis, docker-compose.
test-services:
	bash scripts/test-services.sh

test: $(STAMP) test-services lint
	$(BIN)/pytest

bench: $(STAMP) test-services
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache test-artifacts
