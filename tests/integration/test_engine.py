"""The engine against real Postgres and Redis, called directly: leases, heartbeats, attempts."""

from __future__ import annotations

import threading
import time

import tests.workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor import runs
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.runs import reaper, waiting
from conveyor.runs.execution import Result, execute_run
from conveyor.settings import Settings
from tests.support import new_run

LEASE_SECONDS = 5
USES_FAKE_LLM = True
# Short leases, quick check-ins, outputs over 4 KiB stored outside the row.
SETTINGS = {
    "run_lease_seconds": LEASE_SECONDS,
    "cancel_check_seconds": 0.1,
    "output_inline_max_bytes": 4096,
}


def test_a_step_longer_than_the_lease_keeps_its_run_by_heartbeat(
    db: Database, settings: Settings, publisher: EventPublisher
) -> None:
    """No other worker can claim the run, and the reaper leaves it alone, while it beats."""
    run_id = new_run(db, "wait_then_call", {"seconds": LEASE_SECONDS * 1.6}).id
    results: list[Result] = []
    worker = threading.Thread(
        target=lambda: results.append(execute_run(db, publisher, settings, run_id))
    )
    worker.start()
    while waiting.run_status(db, run_id) == "queued":
        time.sleep(0.01)
    stolen, republished = [], []
    while worker.is_alive():
        stolen.append(runs.claim_run(db, run_id, lease_seconds=LEASE_SECONDS))
        republished.extend(reaper.runs_to_republish(db, older_than_seconds=0))
        time.sleep(0.5)
    worker.join()

    assert results == [Result.COMPLETED]
    assert len(stolen) > 2 * LEASE_SECONDS  # attempts spanned more than one lease
    assert stolen == [None] * len(stolen)
    assert republished == []


def test_a_step_whose_workers_keep_dying_fails_once_its_attempts_are_used(
    db: Database, settings: Settings, publisher: EventPublisher, database_url: str
) -> None:
    """`echo` allows one attempt: a claim after a crashed one fails the run instead of looping."""
    run_id = new_run(db, "echo", {"message": "hi"}).id
    assert runs.claim_run(db, run_id, lease_seconds=LEASE_SECONDS) is not None  # then "killed"
    with db.transaction() as conn:
        conn.execute(
            "update workflow_runs set lease_expires_at = now() - interval '1 second' where id = %s",
            (run_id,),
        )

    assert execute_run(db, publisher, settings, run_id) is Result.FAILED

    with db.connection() as conn:
        run = conn.execute(
            "select error_code, error from workflow_runs where id = %s", (run_id,)
        ).fetchone()
    assert run is not None
    assert run["error_code"] == "STEP_ATTEMPTS_EXHAUSTED"
    assert "interrupted 1 time(s)" in run["error"]
