"""Calls the durable-wait tests share (test_durable_wait*.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import redis

from conveyor.constants import QUEUES
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.ops.broker_queues import UNACKED_KEY
from conveyor.runs.execution import Result, execute_run
from conveyor.settings import Settings
from tests.support import ApiClient, new_run

THREE_DAYS = 3 * 24 * 3600
WAITING = frozenset({"waiting"})


def db_now(db: Database) -> datetime:
    """The database's clock, which the beat job compares wake_at with."""
    with db.transaction() as conn:
        row = conn.execute("select now() as now").fetchone()
    assert row is not None
    return row["now"]


def broker_messages(broker: redis.Redis) -> int:
    """Messages waiting in every queue plus those delivered and not yet acked."""
    return sum(broker.llen(queue) for queue in QUEUES) + broker.hlen(UNACKED_KEY)


def submit(client: ApiClient, workflow_id: str, inputs: dict[str, Any]) -> str:
    """Start a run asynchronously; its id."""
    response = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": workflow_id, "inputs": inputs, "async": True},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["workflow_run_id"])


def run_until_waiting(
    db: Database,
    settings: Settings,
    workflow_id: str,
    inputs: dict[str, Any],
    user_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A run executed in this process up to its wait (no worker, no broker)."""
    run = new_run(db, workflow_id, inputs, user_id=user_id)
    publisher = EventPublisher(str(settings.redis_url))
    try:
        assert execute_run(db, publisher, settings, run.id) is Result.WAITING
    finally:
        publisher.close()
    return run.id


def events_of(client: ApiClient, run_id: str) -> list[dict[str, Any]]:
    """The run's event log."""
    return list(client.get(f"/api/runs/{run_id}/events").json()["events"])


def signal_run(
    client: ApiClient, run_id: uuid.UUID | str, body: dict[str, Any], name: str = "approved"
) -> Any:
    """POST a signal."""
    return client.post(f"/api/runs/{run_id}/signals/{name}", json=body)
