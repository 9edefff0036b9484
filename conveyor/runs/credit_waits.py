"""Runs parked by a step that could not start (StepDeferred): for credits its reservation was
refused, for a rate limit its key had no capacity. Parking gives the step's attempt back and
frees the worker; resuming runs the step again (it never completes it). Credits arriving for a
user requeue their runs waiting for credits (every path that adds credits calls
resume_credit_waiters after commit); the beat's wake_due_runs requeues a rate-limit wait at its
time and fails a credits wait at its time (INSUFFICIENT_CREDITS). docs/architecture.md,
"Waiting for credits"."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NoReturn
from uuid import UUID

import structlog
from psycopg.types.json import Jsonb

from conveyor import outbound
from conveyor.db import Connection, Database
from conveyor.events import notifications
from conveyor.events.run_events import STATUS_UPDATE, EventPublisher, append_events
from conveyor.runs.resume import STEP_RESUMED, STEP_WAITING, Resumed, step_waiting
from conveyor.runs.run_rows import status_data
from conveyor.runs.store import ClaimedRun
from conveyor.runs.supervision import RunCancelled, RunSuspended
from conveyor.steps import StepDeferred

log = structlog.get_logger(__name__)

INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS"
CREDITS = "credits"
RATE_LIMIT = "rate_limit"
DEFERRED_KINDS = frozenset({CREDITS, RATE_LIMIT})

# Back to `queued` with the waiting step `pending` again, only while it still waits for `kind`
# at that step, so concurrent resumers (two top-ups, a top-up and the beat) resume it once.
REQUEUE_SQL = """
with run as (
  update workflow_runs r
     set status = 'queued', enqueued_at = now(), wake_at = null, waiting_since = null,
         updated_at = now(),
         waited_seconds = r.waited_seconds
           + greatest(0, extract(epoch from now() - coalesce(r.waiting_since, now())))
   where r.id = %(id)s and r.status = 'waiting'
     and (not %(due)s or r.wake_at <= coalesce(%(now)s::timestamptz, now()))
     and exists (select 1 from workflow_steps s
                  where s.run_id = r.id and s.position = %(position)s and s.status = 'waiting'
                    and s.wait ->> 'kind' = %(kind)s)
  returning r.*
), step as (
  update workflow_steps s
     set status = 'pending', wake_at = null,
         wait = coalesce(s.wait, '{}'::jsonb) || jsonb_build_object('resumed_by', %(by)s::text)
    from run
   where s.run_id = run.id and s.position = %(position)s
  returning s.name
)
select run.*, step.name as step_name from run, step
"""


def defer(
    db: Database,
    publisher: EventPublisher,
    claim: ClaimedRun,
    position: int,
    deferred: StepDeferred,
) -> NoReturn:
    """Park the run at its running step (fenced by the claim): the attempt is given back, the run
    `waiting` until `deferred.until`, events and (for credits) the user's notification and
    outbound webhook; then RunSuspended ends this attempt. RunCancelled as waits.suspend."""
    wait: dict[str, Any] = {"kind": deferred.reason, **deferred.detail}
    notified = None
    with db.transaction() as conn:
        run = conn.execute(
            """
            update workflow_runs
               set status = 'waiting', lease_expires_at = null, waiting_since = now(),
                   wake_at = %(until)s, updated_at = now()
             where id = %(id)s and attempt = %(attempt)s and status = 'running'
               and cancel_requested_at is null
            returning *
            """,
            {"until": deferred.until, "id": claim.id, "attempt": claim.attempt},
        ).fetchone()
        if run is None:
            raise RunCancelled()
        # The attempt never ran the step: uncounted, so waiting costs no retry.
        step = conn.execute(
            "update workflow_steps set status = 'waiting', wake_at = %s, wait = %s, "
            "attempt = greatest(0, attempt - 1) where run_id = %s and position = %s "
            "returning name",
            (run["wake_at"], Jsonb(wait), claim.id, position),
        ).fetchone()
        assert step is not None, "a claimed run has a row for every step"
        waiting = step_waiting(step["name"], position, run["wake_at"], wait)
        status = {**status_data(run), "waiting_for": deferred.reason}
        events = append_events(conn, claim.id, [(STEP_WAITING, waiting), (STATUS_UPDATE, status)])
        if deferred.reason == CREDITS:
            needed = int(deferred.detail.get("needed", 0))
            available = int(deferred.detail.get("available", 0))
            notified = notifications.notify_waiting_for_credits(
                conn, claim.user_id, claim.id, step["name"], needed, available
            )
            outbound.record_waiting_for_credits(
                conn,
                claim.user_id,
                {"run_id": str(claim.id), "user_id": str(claim.user_id), **waiting},
            )
    publisher.publish(*events)
    notifications.publish_notifications(publisher, [notified] if notified else [])
    log.info("run_deferred", run_id=str(claim.id), reason=deferred.reason, step=step["name"])
    raise RunSuspended()


def requeue(
    conn: Connection,
    run_id: UUID,
    position: int,
    kind: str,
    *,
    resumed_by: str,
    due: bool = False,
    now: datetime | None = None,
) -> Resumed | None:
    """Queue a run parked at position for kind again (its step re-runs); None when it no longer
    waits so (resumed, cancelled). due: only once its wake_at passed."""
    row = conn.execute(
        REQUEUE_SQL,
        {
            "id": run_id,
            "position": position,
            "kind": kind,
            "by": resumed_by,
            "due": due,
            "now": now,
        },
    ).fetchone()
    if row is None:
        return None
    resumed = {"step": row["step_name"], "position": position, "resumed_by": resumed_by}
    events = append_events(
        conn, run_id, [(STEP_RESUMED, resumed), (STATUS_UPDATE, status_data(row))]
    )
    return Resumed(row["id"], row["user_id"], row["status"], row["step_name"], events)


def resume_credit_waiters(db: Database, user_id: UUID) -> list[Resumed]:
    """Credits arrived for the user: queue each of their runs waiting for credits (one
    conditional UPDATE each, its own transaction). The caller publishes the queued runs (the
    reaper picks up any it misses). A run still short of credits parks again."""
    with db.single_statement() as conn:
        waiting = conn.execute(
            """
            select r.id, s.position from workflow_runs r
              join workflow_steps s on s.run_id = r.id and s.status = 'waiting'
             where r.user_id = %s and r.status = 'waiting' and s.wait ->> 'kind' = 'credits'
             order by r.waiting_since, r.id
            """,
            (user_id,),
        ).fetchall()
    resumed: list[Resumed] = []
    for row in waiting:
        with db.transaction() as conn:
            done = requeue(conn, row["id"], row["position"], CREDITS, resumed_by="credits")
        if done is not None:
            resumed.append(done)
    return resumed


def resume_covered(db: Database, limit: int = 500) -> list[Resumed]:
    """The requeue job's safety net: resume the users whose free credits now cover what one of
    their runs waits for, however the credits came (a path that does not resume, or credits that
    arrived just before the run parked)."""
    with db.single_statement() as conn:
        users = conn.execute(
            """
            select distinct r.user_id from workflow_runs r
              join workflow_steps s on s.run_id = r.id and s.status = 'waiting'
              join user_accounts a on a.user_id = r.user_id
             where r.status = 'waiting' and s.wait ->> 'kind' = 'credits'
               and a.credit_balance - a.reserved_credits
                   >= coalesce((s.wait ->> 'needed')::bigint, 0)
             limit %s
            """,
            (limit,),
        ).fetchall()
    return [run for user in users for run in resume_credit_waiters(db, user["user_id"])]


def publish_resumed(publisher: EventPublisher, resumed: list[Resumed]) -> list[UUID]:
    """Publish the resumed runs' events; the ids of the runs to send to the workers."""
    for run in resumed:
        publisher.publish(*run.events)
    return [run.run_id for run in resumed if run.queued]
