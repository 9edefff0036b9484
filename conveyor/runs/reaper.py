"""The reaper's queries: runs that look lost are published again, and runs asked to cancel whose
worker vanished end as cancelled (tasks/maintenance.py runs both every 30 s)."""

from __future__ import annotations

from uuid import UUID

from conveyor.db import Database
from conveyor.events.run_events import RunEvent
from conveyor.runs.store import record_cancelled


def runs_to_republish(db: Database, *, older_than_seconds: int, limit: int = 500) -> list[UUID]:
    """Runs that look lost (queued too long, or a lease that expired) and mark them republished.
    A held run not yet dispatched is waiting by design: conveyor_dispatch_runs publishes it."""
    with db.transaction() as conn:
        rows = conn.execute(
            """
            update workflow_runs
               set enqueued_at = now()
             where id in (
               select id from workflow_runs
                where (status = 'queued' and dispatched_at is not null
                       and coalesce(enqueued_at, created_at) < now() - make_interval(secs => %s))
                   or (status = 'running' and lease_expires_at < now()
                       and coalesce(enqueued_at, created_at) < now() - make_interval(secs => %s))
                order by created_at
                limit %s
                for update skip locked)
            returning id
            """,
            (older_than_seconds, older_than_seconds, limit),
        ).fetchall()
    return [row["id"] for row in rows]


def finalize_abandoned_cancellations(db: Database) -> list[RunEvent]:
    """Runs asked to cancel whose worker vanished (lease expired) end as cancelled."""
    with db.transaction() as conn:
        rows = conn.execute(
            """
            update workflow_runs
               set status = 'cancelled', finished_at = now(), updated_at = now(),
                   lease_expires_at = null, current_step = null
             where status = 'running' and cancel_requested_at is not null
               and lease_expires_at < now()
            returning *
            """
        ).fetchall()
        return [event for row in rows for event in record_cancelled(conn, row)]
