"""`POST /api/usage` keeps each accepted batch in Postgres (usage_batches) until a worker records
it: Redis down at accept time, a message lost with its worker, or one in the format from before
batches were stored, each batch is still recorded exactly once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from conveyor.auth.tokens import mint_service_token
from conveyor.cli.services import EmbeddedRedis, free_port
from conveyor.constants import TASK_RECORD_USAGE, TASK_REQUEUE_USAGE_BATCHES
from conveyor.db import Database
from conveyor.ledger.ingest import UsageEventIn, batches_to_republish, events_json
from tests.acceptance.test_usage_ingest import stored_batches, stored_events, usage_event
from tests.support import (
    API_SECRET,
    ApiClient,
    LiveServer,
    close_worker_resources,
    make_settings,
    wait_until,
)
from worker.celery_app import create_celery


@pytest.fixture
def stopped_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, not yet started, on a port nothing listens on."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), persist=False)
    yield server
    server.stop()


def test_a_batch_sent_while_redis_is_down_is_kept_and_recorded_once_redis_is_back(
    database_url: str, stopped_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    """202 at once (the batch is stored in Postgres); the requeue job publishes it when Redis is
    back, and the caller's retry with the same keys adds nothing."""
    settings = make_settings(database_url, stopped_redis.url, tmp_path / "data")
    token = mint_service_token("billing", ["usage:write"], secret=API_SECRET)
    batch = {"events": [usage_event(uuid.uuid4(), f"k{i}") for i in range(5)]}
    server = LiveServer(settings)
    with server:
        service = ApiClient(server.url, token)
        started = time.monotonic()
        accepted_while_down = service.post("/api/usage", json=batch)
        answered_in = time.monotonic() - started

        stopped_redis.start()
        app = create_celery(settings)
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
            app.send_task(TASK_REQUEUE_USAGE_BATCHES, kwargs={"older_than_seconds": 0})
            wait_until(lambda: stored_events(database_url) == 5, 15, "the kept batch recorded")
            again = service.post("/api/usage", json=batch)
            wait_until(lambda: stored_batches(database_url) == 0, 15, "the retry processed")
        close_worker_resources(app)

    assert accepted_while_down.status_code == 202
    assert answered_in < 5, f"the answer took {answered_in:.1f} s"
    assert again.status_code == 202
    assert stored_events(database_url) == 5


def test_a_batch_whose_message_was_lost_is_republished_and_recorded_once(
    service: ApiClient,
    celery_app: Celery,
    db: Database,
    database_url: str,
    clean_redis: redis.Redis,
) -> None:
    """The message a worker took off the queue and died with before registering it is gone from
    Redis: the stored batch is what the requeue job publishes again."""
    batch = {"events": [usage_event(uuid.uuid4(), f"lost{i}") for i in range(3)]}
    assert service.post("/api/usage", json=batch).status_code == 202
    assert clean_redis.delete("usage") == 1  # the message, gone as if with its worker
    assert stored_batches(database_url) == 1

    with start_worker(celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        celery_app.send_task(TASK_REQUEUE_USAGE_BATCHES, kwargs={"older_than_seconds": 0})
        wait_until(lambda: stored_events(database_url) == 3, 15, "the republished batch recorded")
    close_worker_resources(celery_app)

    assert stored_events(database_url) == 3
    assert batches_to_republish(db, older_than_seconds=0) == []  # recorded: nothing left to send


def test_a_message_queued_before_batches_were_stored_is_still_recorded_once(
    celery_app: Celery, database_url: str, usage_results: list[Any]
) -> None:
    """Old-style messages carry the events themselves; a rolling deploy must not drop them."""
    events = [UsageEventIn.model_validate(usage_event(uuid.uuid4(), f"old{i}")) for i in range(2)]
    with start_worker(celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        for _ in range(2):  # and a redelivery of it
            celery_app.send_task(TASK_RECORD_USAGE, args=[events_json(events)])
        wait_until(lambda: len(usage_results) == 2, 15, "both copies processed")
    close_worker_resources(celery_app)

    assert [(r["recorded"], r["duplicates"]) for r in usage_results] == [(2, 0), (0, 2)]
    assert stored_events(database_url) == 2
