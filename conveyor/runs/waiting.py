"""Wait, bounded, for a run to finish: woken by its events on Redis, checked against Postgres."""

from __future__ import annotations

import time
from uuid import UUID

import redis

from conveyor.constants import run_topic
from conveyor.db import Database
from conveyor.errors import RunNotFound
from conveyor.events.run_events import EventPublisher
from conveyor.runs.payloads import FINAL_STATUSES

# Without Redis the wait falls back to polling Postgres at this interval.
POLL_SECONDS = 0.25


def run_status(db: Database, run_id: UUID) -> str:
    """The run's current status; RunNotFound once it is gone (its user was forgotten meanwhile)."""
    with db.connection() as conn:
        row = conn.execute("select status from workflow_runs where id = %s", (run_id,)).fetchone()
    if row is None:
        raise RunNotFound(f"run {run_id} no longer exists")
    return str(row["status"])


def wait_for_final(db: Database, publisher: EventPublisher, run_id: UUID, timeout: float) -> str:
    """The run's status once it is final or `waiting` (a durable wait may last days: no request
    should hold on for it), or whatever it is when `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    # Subscribe before the first read, so an event published in between still wakes us.
    with publisher.subscription(run_topic(run_id)) as subscription:
        while True:
            status = run_status(db, run_id)
            remaining = deadline - time.monotonic()
            if status in FINAL_STATUSES or status == "waiting" or remaining <= 0:
                return status
            if subscription is None:
                time.sleep(min(POLL_SECONDS, remaining))
                continue
            try:
                subscription.get_message(timeout=min(1.0, remaining))
            except redis.RedisError:
                subscription = None
