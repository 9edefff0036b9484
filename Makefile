# Everything runs from .venv, created on first use: a fresh machine needs only Python 3.11 and pip.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install run test test-all lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

## Start embedded Postgres/Redis when DATABASE_URL/REDIS_URL are unset, migrate, run web+worker+beat.
run: install
	$(BIN)/conveyor run

## The quick suite (everything but tests marked slow) against real services.
test: install
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

## Every test, slow ones included.
test-all: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy conveyor

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench.enqueue
	$(BIN)/python -m bench.workflows
	$(BIN)/python -m bench.usage

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
