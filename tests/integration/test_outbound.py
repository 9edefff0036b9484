"""The outbound outbox in Postgres: events only when someone listens, one delivery per target,
created with the run's end and never by a finish that lost its lease; attempts fenced by number."""

from __future__ import annotations

import uuid
from pathlib import Path

from conveyor import runs
from conveyor.db import Database
from conveyor.outbound import delivery as webhook_delivery
from conveyor.outbound.endpoints import EndpointCreate, create_endpoint
from conveyor.outbound.http import SendResult
from conveyor.settings import Settings
from tests.support import new_run

URL = "http://127.0.0.1:9/hooks"  # never contacted: these tests record results themselves


def finished_run(
    db: Database, user: uuid.UUID, *, webhook_url: str | None = None
) -> list[uuid.UUID]:
    """Create, claim and complete an echo run; the webhook deliveries its end created."""
    created = new_run(db, "echo", user_id=user, webhook_url=webhook_url)
    claimed = runs.claim_run(db, created.id, lease_seconds=60)
    assert claimed is not None
    deliveries: list[uuid.UUID] = []
    assert runs.finish_run(db, claimed[0], runs.Outcome(output={}), deliveries=deliveries)
    return deliveries


def register(db: Database, user: uuid.UUID, *events: str) -> uuid.UUID:
    body = EndpointCreate(url=URL, events=list(events))
    return create_endpoint(db, user, body, allow_private=True, max_endpoints=10).id


def count(db: Database, table: str) -> int:
    with db.transaction() as conn:
        row = conn.execute(f"select count(*) as n from conveyor.{table}").fetchone()  # noqa: S608
    assert row is not None
    return int(row["n"])


def test_a_run_nobody_listens_to_stores_no_event(db: Database) -> None:
    user = uuid.uuid4()
    register(db, user, "run.failed")

    assert finished_run(db, user) == []
    assert count(db, "webhook_events") == 0


def test_each_subscribed_endpoint_and_the_runs_own_url_get_one_delivery(db: Database) -> None:
    user = uuid.uuid4()
    register(db, user, "run.completed")
    register(db, user, "run.completed", "run.failed")
    register(db, uuid.uuid4(), "run.completed")  # another user's

    deliveries = finished_run(db, user, webhook_url=URL + "?own")

    assert len(deliveries) == 3
    assert count(db, "webhook_events") == 1


def test_a_finish_that_lost_its_lease_creates_no_delivery(db: Database) -> None:
    user = uuid.uuid4()
    register(db, user, "run.completed")
    created = new_run(db, "echo", user_id=user)
    first = runs.claim_run(db, created.id, lease_seconds=60)
    assert first is not None
    with db.transaction() as conn:
        conn.execute(
            "update conveyor.workflow_runs set lease_expires_at = now() - interval '1 s' "
            "where id = %s",
            (created.id,),
        )
    assert runs.claim_run(db, created.id, lease_seconds=60) is not None
    deliveries: list[uuid.UUID] = []

    assert runs.finish_run(db, first[0], runs.Outcome(output={}), deliveries=deliveries) is None
    assert deliveries == []
    assert count(db, "webhook_deliveries") == 0


def test_the_result_of_an_attempt_that_lost_its_lease_is_not_recorded(
    db: Database, tmp_path: Path
) -> None:
    """A slow worker whose lease expired cannot overwrite what its successor recorded."""
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    user = uuid.uuid4()
    register(db, user, "run.completed")
    [delivery] = finished_run(db, user)
    slow = webhook_delivery.claim(db, delivery, settings)
    assert slow is not None
    assert webhook_delivery.claim(db, delivery, settings) is None, "held by the slow worker"
    with db.transaction() as conn:
        conn.execute(
            "update conveyor.webhook_deliveries set lease_until = now() - interval '1 s' "
            "where id = %s",
            (delivery,),
        )
    successor = webhook_delivery.claim(db, delivery, settings)
    assert successor is not None

    late = webhook_delivery.record_attempt(db, settings, slow, SendResult(500, 9000, "HTTP 500"))
    done = webhook_delivery.record_attempt(db, settings, successor, SendResult(200, 5, None))

    assert (slow.attempt, successor.attempt) == (1, 2)
    assert late.outcome is webhook_delivery.DeliveryOutcome.SKIPPED
    assert done.outcome is webhook_delivery.DeliveryOutcome.SUCCEEDED
    with db.transaction() as conn:
        attempts = conn.execute(
            "select attempt, status_code from conveyor.webhook_delivery_attempts"
        ).fetchall()
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(2, 200)]
