"""Step checkpoints: each write is fenced by the run's attempt, so a worker that lost its lease
can never record anything over its successor's work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conveyor.db import Connection, Database
from conveyor.events.run_events import STATUS_UPDATE, RunEvent, append_event, append_events
from conveyor.runs.step_rows import CompletedStep, mark_completed
from conveyor.runs.store import ClaimedRun, status_data

STEP_RETRYING = "step_retrying"


@dataclass(frozen=True)
class Liveness:
    """What a running run learns when it checks in: whether someone asked it to stop."""

    cancel_requested: bool


def _touch_run(
    conn: Connection,
    claim: ClaimedRun,
    *,
    lease_seconds: int,
    progress: float | None = None,
    current_step: str | None = None,
) -> dict[str, Any] | None:
    """Renew the lease (and set progress) only if this worker still holds the run."""
    return conn.execute(
        """
        update workflow_runs
           set lease_expires_at = now() + make_interval(secs => %(lease)s),
               heartbeat_at = now(),
               progress = coalesce(%(progress)s, progress),
               current_step = coalesce(%(step)s, current_step),
               updated_at = now()
         where id = %(id)s and attempt = %(attempt)s and status = 'running'
        returning *
        """,
        {
            "lease": lease_seconds,
            "progress": progress,
            "step": current_step,
            "id": claim.id,
            "attempt": claim.attempt,
        },
    ).fetchone()


def complete_step(
    db: Database,
    claim: ClaimedRun,
    step: CompletedStep,
    *,
    next_step: tuple[int, str],
    progress: float,
    lease_seconds: int,
) -> list[RunEvent] | None:
    """Checkpoint a finished step with its output and usage and start the next one, in one
    transaction. None: this worker no longer holds the run. (The last step is recorded by
    finish_run, in the run's final transaction.)"""
    with db.transaction() as conn:
        run = _touch_run(
            conn, claim, lease_seconds=lease_seconds, progress=progress, current_step=next_step[1]
        )
        if run is None:
            return None
        completed = mark_completed(conn, claim.owner(), step)
        # Never a step already completed (a branch that ran beside this one).
        conn.execute(
            "update workflow_steps set status = 'running', attempt = attempt + 1, "
            "started_at = now() where run_id = %s and position = %s and status <> 'completed'",
            (claim.id, next_step[0]),
        )
        return append_events(conn, claim.id, [*completed, (STATUS_UPDATE, status_data(run))])


def record_retry(
    db: Database,
    claim: ClaimedRun,
    *,
    position: int,
    error: str,
    error_code: str,
    retry_in: float,
    lease_seconds: int,
) -> RunEvent | None:
    """Record a failed attempt and when the next one starts. None: the run is no longer ours."""
    with db.transaction() as conn:
        if _touch_run(conn, claim, lease_seconds=lease_seconds) is None:
            return None
        step = conn.execute(
            "update workflow_steps set error = %s, error_code = %s "
            "where run_id = %s and position = %s returning name, attempt",
            (error, error_code, claim.id, position),
        ).fetchone()
        assert step is not None
        return append_event(
            conn,
            claim.id,
            STEP_RETRYING,
            {
                "step": step["name"],
                "position": position,
                "failed_attempt": step["attempt"],
                "next_attempt": step["attempt"] + 1,
                "error": error,
                "error_code": error_code,
                "retry_in_seconds": round(retry_in, 3),
            },
        )


def start_attempt(db: Database, claim: ClaimedRun, *, position: int) -> bool:
    """Count the next attempt of a step; False if this worker no longer holds the run."""
    with db.transaction() as conn:
        row = conn.execute(
            """
            update workflow_steps s set attempt = s.attempt + 1
              from workflow_runs r
             where s.run_id = %s and s.position = %s
               and r.id = s.run_id and r.attempt = %s and r.status = 'running'
            returning s.attempt
            """,
            (claim.id, position, claim.attempt),
        ).fetchone()
    return row is not None


def check_in(
    db: Database, claim: ClaimedRun, *, renew_lease_seconds: int | None
) -> Liveness | None:
    """Look for a cancel request, renewing the lease when asked. None: the run is no longer ours."""
    with db.transaction() as conn:
        if renew_lease_seconds is not None:
            row = _touch_run(conn, claim, lease_seconds=renew_lease_seconds)
        else:
            row = conn.execute(
                "select cancel_requested_at from workflow_runs "
                "where id = %s and attempt = %s and status = 'running'",
                (claim.id, claim.attempt),
            ).fetchone()
    if row is None:
        return None
    return Liveness(cancel_requested=row["cancel_requested_at"] is not None)


def hand_back(db: Database, claim: ClaimedRun, *, uncount_attempt: bool) -> RunEvent | None:
    """Give a run back to the queue (this worker is stopping): queued, no lease, the running step
    pending again and, if uncount_attempt, its interrupted attempt not counted. None: the run is
    no longer ours, or a cancel was asked for (finish_run records that)."""
    with db.transaction() as conn:
        run = conn.execute(
            """
            update workflow_runs
               set status = 'queued', lease_expires_at = null, enqueued_at = now(),
                   updated_at = now()
             where id = %s and attempt = %s and status = 'running'
               and cancel_requested_at is null
            returning *
            """,
            (claim.id, claim.attempt),
        ).fetchone()
        if run is None:
            return None
        conn.execute(
            "update workflow_steps set status = 'pending', "
            "attempt = attempt - case when %s then 1 else 0 end "
            "where run_id = %s and status = 'running'",
            (uncount_attempt, claim.id),
        )
        return append_event(conn, claim.id, STATUS_UPDATE, status_data(run))
