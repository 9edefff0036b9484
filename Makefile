# Everything runs from .venv, created on first use: a fresh machine needs only Python 3.11 and pip.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=
# Test processes for `make test` (pytest-xdist), each with its own embedded Postgres and Redis. The
# suite mostly waits on servers and workers: 3 processes on 2 cores took 8.7 min, one took ~14.
TEST_WORKERS ?= 3

.PHONY: install browser run test test-rabbitmq test-all fuzz chaos lint format bench bench-load bench-ws bench-webhooks bench-maintenance bench-stream bench-map bench-ratelimit bench-dispatch bench-capacity clean

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

## Debian's chromium and chromium-driver for tests/browser, installed only when missing (root).
browser:
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	  chromium chromium-driver; }

## The quick suite (everything but tests marked slow or chaos) against real services.
test: install browser
	$(BIN)/pytest -m "not slow and not chaos and not multihost" -n $(TEST_WORKERS) $(PYTEST_ARGS)
	$(BIN)/pytest -m multihost tests/multihost $(PYTEST_ARGS)

## The quick suite with Celery on RabbitMQ (TEST_BROKER_URL's, a vhost per test process) instead of Redis.
test-rabbitmq: install browser
	TEST_SUITE_BROKER=rabbitmq TEST_BROKER_URL=$${TEST_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672//} $(BIN)/pytest -m "not slow and not chaos and not multihost" -n $(TEST_WORKERS) $(PYTEST_ARGS)

## schemathesis against the live API, long: FUZZ_MAX_EXAMPLES per operation and caller (default 50, ~10 min).
fuzz: install
	FUZZ_MAX_EXAMPLES=$${FUZZ_MAX_EXAMPLES:-50} $(BIN)/pytest -m fuzz $(PYTEST_ARGS)

## Every test, slow ones included.
test-all: install browser
	$(BIN)/pytest $(PYTEST_ARGS)

## Kill a worker, restart Redis, restart Postgres, kill the active beat under load; prints a table.
chaos: install
	$(BIN)/pytest -m chaos -s tests/chaos $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy conveyor
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench.enqueue
	$(BIN)/python -m bench.workflows
	$(BIN)/python -m bench.usage
	$(BIN)/python -m bench.webhooks
	$(BIN)/python -m bench.maintenance
	$(BIN)/python -m bench.ws
	$(BIN)/python -m bench.load

## Submit → first streamed token on the websocket, p50/p99, beside the provider's own (bench/stream_first_token.py).
bench-stream: install
	$(BIN)/python -m bench.stream_first_token

## A 1,000-item map of no-op items beside 1,000 bare Celery tasks on two workers (bench/map_fanout.py).
bench-map: install
	$(BIN)/python -m bench.map_fanout

## Tokens a window admitted by the global LLM rate limit against the limit, 2 processes (bench/rate_limit_accuracy.py).
bench-ratelimit: install
	$(BIN)/python -m bench.rate_limit_accuracy

## Runs/s of no-op runs with a concurrency key and limit beside the same runs without (bench/dispatch_overhead.py).
bench-dispatch: install
	$(BIN)/python -m bench.dispatch_overhead

## The capacity model's inputs: statements, WAL, broker and Redis ops per run/step, connections per process (bench/capacity.py).
bench-capacity: install
	$(BIN)/python -m bench.capacity

## HTTP submit + poll + websockets for a fixed time beside a bare Flask + Celery endpoint (bench/load.py).
bench-load: install
	$(BIN)/python -m bench.load

## 1,000 websockets: publish→receive latency p50/p99 and lost messages (bench/ws.py).
bench-ws: install
	$(BIN)/python -m bench.ws

## Stripe webhooks accepted/s at the endpoint and processed/s by one worker (bench/webhooks.py).
bench-webhooks: install
	$(BIN)/python -m bench.webhooks

## Retention deletes of 1,000,000 rows in batches beside concurrent inserts (bench/maintenance.py).
bench-maintenance: install
	$(BIN)/python -m bench.maintenance

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
