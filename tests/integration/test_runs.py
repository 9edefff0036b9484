"""The run state machine in Postgres: one claim at a time, fenced writes, lost runs found."""

from __future__ import annotations

import json
import uuid

import pytest

from conveyor import runs
from conveyor.db import Database, sql_connection
from conveyor.events.run_events import EventPublisher
from conveyor.runs import reaper, views
from conveyor.runs.execution import Result, execute_run
from conveyor.settings import Settings
from tests.support import ECHO_STEPS, new_run


@pytest.fixture
def run_id(db: Database) -> uuid.UUID:
    new = new_run(db, "echo", {"a": 1})
    return new.id


def expire_lease(database_url: str, run_id: uuid.UUID) -> None:
    with sql_connection(database_url) as conn:
        conn.execute(
            "update workflow_runs set lease_expires_at = now() - interval '1 second' where id = %s",
            (run_id,),
        )


def age(database_url: str, run_id: uuid.UUID, seconds: int) -> None:
    with sql_connection(database_url) as conn:
        conn.execute(
            "update workflow_runs set created_at = now() - make_interval(secs => %s) where id = %s",
            (seconds, run_id),
        )


def test_a_run_can_be_claimed_only_once(db: Database, run_id: uuid.UUID) -> None:
    assert runs.claim_run(db, run_id, lease_seconds=60) is not None
    assert runs.claim_run(db, run_id, lease_seconds=60) is None


def test_an_expired_lease_can_be_claimed_again_with_the_next_attempt(
    db: Database, run_id: uuid.UUID, database_url: str
) -> None:
    first = runs.claim_run(db, run_id, lease_seconds=60)
    expire_lease(database_url, run_id)
    second = runs.claim_run(db, run_id, lease_seconds=60)
    assert first is not None
    assert second is not None
    assert (first[0].attempt, second[0].attempt) == (1, 2)


def test_the_claim_event_carries_the_status_payload_python_builds_for_the_claimed_row(
    db: Database, run_id: uuid.UUID
) -> None:
    claimed = runs.claim_run(db, run_id, lease_seconds=60)

    assert claimed is not None
    _, event = claimed
    with db.transaction() as conn:
        row = conn.execute("select * from workflow_runs where id = %s", (run_id,)).fetchone()
        stored = conn.execute(
            "select seq, data from run_events where run_id = %s order by seq desc limit 1",
            (run_id,),
        ).fetchone()
    assert row is not None
    assert stored is not None
    assert event.data == runs.status_data(row)
    assert (event.seq, row["last_event_seq"], stored["data"]) == (2, 2, event.data)
    assert event.data["status"] == "running"
    assert event.data["step"] == ECHO_STEPS[0][0]


@pytest.mark.parametrize(
    ("progress", "updated_at", "timezone"),
    [
        (1 / 3, "2026-11-23 10:11:12.5+00", "UTC"),
        (0.25, "2026-11-23 10:11:12+00", "UTC"),  # whole seconds: isoformat() omits the fraction
        (1, "2026-11-23 10:11:12.000001+00", "UTC"),
        (0, "2026-11-23 10:11:12.25+00", "America/St_Johns"),  # a negative half-hour offset
    ],
)
def test_the_status_payload_built_in_sql_matches_the_one_built_in_python(
    db: Database, run_id: uuid.UUID, progress: float, updated_at: str, timezone: str
) -> None:
    with db.transaction() as conn:
        conn.execute("select set_config('timezone', %s, true)", (timezone,))
        conn.execute(
            "update workflow_runs set progress = %s, updated_at = %s where id = %s",
            (progress, updated_at, run_id),
        )
        row = conn.execute(
            "select r.*, conveyor.conveyor_status_data(r) as sql_payload "
            "from workflow_runs r where id = %s",
            (run_id,),
        ).fetchone()
    assert row is not None

    # Compared as JSON text, so 0 and 0.0 (or two spellings of a time) differ.
    expected = json.dumps(runs.status_data(row), sort_keys=True)
    assert json.dumps(row["sql_payload"], sort_keys=True) == expected


def test_a_worker_that_lost_its_lease_cannot_finish_the_run(
    db: Database, run_id: uuid.UUID, database_url: str
) -> None:
    stale = runs.claim_run(db, run_id, lease_seconds=60)
    expire_lease(database_url, run_id)
    assert runs.claim_run(db, run_id, lease_seconds=60) is not None
    assert stale is not None

    assert runs.finish_run(db, stale[0], runs.Outcome(output={"late": True})) is None
    with db.transaction() as conn:
        row = conn.execute("select status, output from workflow_runs where id = %s", (run_id,))
        assert row.fetchone() == {"status": "running", "output": None}


def test_executing_a_finished_run_again_is_a_no_op(
    db: Database, run_id: uuid.UUID, redis_url: str, settings: Settings
) -> None:
    publisher = EventPublisher(redis_url)
    assert execute_run(db, publisher, settings, run_id) is Result.COMPLETED
    assert execute_run(db, publisher, settings, run_id) is Result.SKIPPED
    publisher.close()


def test_queued_runs_older_than_the_threshold_are_republished_once_per_period(
    db: Database, run_id: uuid.UUID, database_url: str
) -> None:
    assert reaper.runs_to_republish(db, older_than_seconds=60) == []
    age(database_url, run_id, 120)
    assert reaper.runs_to_republish(db, older_than_seconds=60) == [run_id]
    # Republishing stamps enqueued_at: the next scan leaves it alone until the period passes again.
    assert reaper.runs_to_republish(db, older_than_seconds=60) == []


def test_running_runs_with_an_expired_lease_are_republished(
    db: Database, run_id: uuid.UUID, database_url: str
) -> None:
    runs.claim_run(db, run_id, lease_seconds=60)
    age(database_url, run_id, 120)
    assert reaper.runs_to_republish(db, older_than_seconds=60) == []
    expire_lease(database_url, run_id)
    assert reaper.runs_to_republish(db, older_than_seconds=60) == [run_id]


def test_finished_runs_are_never_republished(
    db: Database, run_id: uuid.UUID, database_url: str, redis_url: str, settings: Settings
) -> None:
    publisher = EventPublisher(redis_url)
    execute_run(db, publisher, settings, run_id)
    publisher.close()
    age(database_url, run_id, 3600)
    assert reaper.runs_to_republish(db, older_than_seconds=0) == []


def test_event_seqs_are_gap_free_per_run(
    db: Database, run_id: uuid.UUID, redis_url: str, settings: Settings
) -> None:
    publisher = EventPublisher(redis_url)
    execute_run(db, publisher, settings, run_id)
    publisher.close()
    with db.transaction() as conn:
        seqs = [
            r["seq"]
            for r in conn.execute(
                "select seq from run_events where run_id = %s order by seq", (run_id,)
            )
        ]
    assert seqs == [1, 2, 3, 4]


def test_a_run_cancelled_while_running_finishes_as_cancelled_without_output(
    db: Database, run_id: uuid.UUID
) -> None:
    claimed = runs.claim_run(db, run_id, lease_seconds=60)
    assert claimed is not None
    owner_claims = {"sub": str(claimed[0].user_id), "role": "authenticated"}
    view, _, _ = runs.cancel_run(db, owner_claims, run_id)
    assert (view.status, view.cancel_requested_at is not None) == ("running", True)

    runs.finish_run(db, claimed[0], runs.Outcome(output={"done": True}))

    final = views.get_run(db, owner_claims, run_id)
    assert (final.status, final.output) == ("cancelled", None)


def test_a_cancel_requested_run_whose_worker_vanished_ends_cancelled(
    db: Database, run_id: uuid.UUID, database_url: str
) -> None:
    claimed = runs.claim_run(db, run_id, lease_seconds=60)
    assert claimed is not None
    owner_claims = {"sub": str(claimed[0].user_id), "role": "authenticated"}
    runs.cancel_run(db, owner_claims, run_id)
    expire_lease(database_url, run_id)

    assert runs.claim_run(db, run_id, lease_seconds=60) is None
    assert [e.data["status"] for e in reaper.finalize_abandoned_cancellations(db)] == ["cancelled"]
