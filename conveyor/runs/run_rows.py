"""Rows of a run that every writer shares: the status event's payload and closing the steps of a
run that ended (store.py, waits, approvals and child runs all end runs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from conveyor.db import Connection
from conveyor.events.run_events import STATUS_UPDATE, RunEvent

STEP_FAILED = "step_failed"


def status_data(row: dict[str, Any]) -> dict[str, Any]:
    """The `workflow_status_update` payload for a run row."""
    return {
        "workflow_run_id": str(row["id"]),
        "workflow_id": row["workflow_id"],
        "user_id": str(row["user_id"]),
        "status": row["status"],
        "step": row["current_step"],
        "progress": row["progress"],
        "updated_at": row["updated_at"].isoformat(),
    } | held_for(row)


def held_for(row: dict[str, Any]) -> dict[str, Any]:
    """`waiting_for` of a queued run held for dispatch (additive; absent otherwise)."""
    if row["status"] != "queued" or row.get("dispatched_at", True) is not None:
        return {}
    not_before = row.get("not_before")
    return {"waiting_for": "debounce" if not_before is not None else "concurrency"}


def waiting_for(row: dict[str, Any], steps: list[dict[str, Any]]) -> str | None:
    """What a run waits for: its hold while queued for dispatch, else while `waiting` the kind
    of its waiting step's wait (None for a run parked on a map of child runs, or not waiting)."""
    held = held_for(row).get("waiting_for")
    if held is not None or row["status"] != "waiting":
        return held
    kinds = [step["wait"]["kind"] for step in steps if step["status"] == "waiting" and step["wait"]]
    return kinds[0] if kinds else None


def close_unfinished_steps(
    conn: Connection,
    run_id: UUID,
    *,
    run_status: str,
    failed_position: int | None = None,
    error: str | None = None,
    error_code: str | None = None,
) -> list[dict[str, Any]]:
    """Give every pending, running or waiting step its final status: the failing step `failed`,
    the rest `skipped` after a failure and `cancelled` after a cancel; a branch or map item not
    finished is `cancelled` (same statement). Returns the steps that changed."""
    return conn.execute(
        """
        with items as (
          update run_work_items
             set status = 'cancelled', finished_at = now(), lease_expires_at = null
           where run_id = %(run)s and status in ('pending', 'running', 'waiting'))
        update workflow_steps
           set status = case when %(run_status)s = 'cancelled' then 'cancelled'
                             when position = %(failed)s then 'failed'
                             else 'skipped' end,
               error = case when position = %(failed)s then %(error)s else error end,
               error_code = case when position = %(failed)s then %(code)s else error_code end,
               finished_at = case when status in ('running', 'waiting') then now()
                                  else finished_at end
         where run_id = %(run)s and status in ('pending', 'running', 'waiting')
        returning name as step, position, status, error, error_code
        """,
        {
            "failed": failed_position,
            "run_status": run_status,
            "error": error,
            "code": error_code,
            "run": run_id,
        },
    ).fetchall()


def lock_held(conn: Connection, run_id: UUID, attempt: int) -> dict[str, Any] | None:
    """Lock the run's row while `attempt` still holds it (`running`), as every writer of a run
    locks it first; its `cancel_requested_at`, or None when the run is no longer that attempt's."""
    row = conn.execute(
        "select cancel_requested_at from workflow_runs "
        "where id = %s and attempt = %s and status = 'running' for no key update",
        (run_id, attempt),
    ).fetchone()
    return dict(row) if row is not None else None


def ended_run(conn: Connection, run_id: UUID) -> dict[str, Any] | None:
    """The run, if it has ended (completed, failed or cancelled)."""
    row = conn.execute(
        "select * from workflow_runs where id = %s "
        "and status in ('completed', 'failed', 'cancelled')",
        (run_id,),
    ).fetchone()
    return dict(row) if row is not None else None


def queued_by(events: Sequence[RunEvent], besides: UUID | None = None) -> list[UUID]:
    """The runs these events put back in the queue (a parent whose child's end queued it),
    `besides` the one the caller publishes anyway: to publish after commit."""
    found = (
        event.run_id
        for event in events
        if event.event == STATUS_UPDATE
        and event.data.get("status") == "queued"
        and event.run_id != besides
    )
    return list(dict.fromkeys(found))
