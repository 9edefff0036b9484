"""Singleton and debounce keys, in a submit's transaction: drop a second run (409), cancel the
one it replaces, or cancel the earlier debounced runs still held."""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from conveyor.db import Connection
from conveyor.errors import Conflict
from conveyor.events.run_events import RunEvent
from conveyor.runs.dispatch import Hold
from conveyor.runs.store import record_cancelled

DEBOUNCED = "DEBOUNCED"
REPLACED = "REPLACED"


class SingletonInFlight(Conflict):
    """A singleton key with policy `drop` already has a run queued, running or waiting."""

    code: ClassVar[str] = "SINGLETON_IN_FLIGHT"

    def to_dict(self) -> dict[str, Any]:
        """The error body, with the run in flight at its top level."""
        return {**super().to_dict(), "run_id": self.details["run_id"]}


def settle_key(conn: Connection, run_id: UUID, hold: Hold | None) -> list[RunEvent]:
    """Apply the new run's singleton or debounce policy under a lock on its key (so concurrent
    submits see each other); the events of the runs it cancelled, to publish after commit."""
    if hold is None or hold.concurrency_key is None:
        return []
    if hold.singleton not in ("drop", "replace") and hold.debounce_seconds is None:
        return []
    # The dispatcher's lock first, then the key's: the dispatcher holds its lock while it locks
    # held rows, so taking it after cancelling (row locks) could deadlock with it.
    conn.execute("select pg_advisory_xact_lock(hashtext('conveyor_dispatch_runs'))")
    conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (hold.concurrency_key,))
    others = conn.execute(
        "select id, status, dispatched_at, not_before > now() as in_window "
        "from workflow_runs where concurrency_key = %s "
        "and id <> %s and status in ('queued', 'running', 'waiting') order by created_at",
        (hold.concurrency_key, run_id),
    ).fetchall()
    if hold.singleton == "drop":
        if others:
            raise SingletonInFlight(
                f"a run with singleton key {hold.concurrency_key[10:]!r} is in flight",
                run_id=str(others[0]["id"]),
            )
        return []
    if hold.singleton == "replace":
        # Queued or waiting ones end now; a running one is asked to stop and ends with its
        # worker, which frees the key's slot for the new run.
        return cancel(conn, [o["id"] for o in others], REPLACED, "replaced by a newer run")
    # Only runs still inside their window: one whose window ended waits for the dispatcher only.
    held = [
        o["id"]
        for o in others
        if o["status"] == "queued" and o["dispatched_at"] is None and o["in_window"]
    ]
    return cancel(conn, held, DEBOUNCED, "debounced: a later run with the same key replaced it")


def cancel(conn: Connection, run_ids: list[UUID], code: str, error: str) -> list[RunEvent]:
    """Cancel these runs (queued or waiting ones at once, running ones by request)."""
    if not run_ids:
        return []
    rows: list[dict[str, Any]] = conn.execute(
        """
        update workflow_runs
           set status = case when status in ('queued', 'waiting') then 'cancelled' else status end,
               finished_at = case when status in ('queued', 'waiting') then now()
                                  else finished_at end,
               error = case when status in ('queued', 'waiting') then %s else error end,
               error_code = case when status in ('queued', 'waiting') then %s else error_code end,
               cancel_requested_at = coalesce(cancel_requested_at, now()),
               wake_at = null, waiting_since = null, updated_at = now()
         where id = any(%s) and status in ('queued', 'running', 'waiting')
        returning *
        """,
        (error, code, run_ids),
    ).fetchall()
    return [e for row in rows if row["status"] == "cancelled" for e in record_cancelled(conn, row)]
