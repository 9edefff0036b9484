"""Durable waits: a run that sleeps, waits for a signal, an approval or a child run is a
`waiting` row, not a busy worker.

`suspend` commits the wait from the engine (fenced like a checkpoint) and ends the attempt (a
`workflow` step's child is started in that transaction: child_start.py); `wake_due_runs` (the
beat job), `signals.deliver_signal`, `approvals` and a child's end (`children.child_ended`)
resume a run with one conditional UPDATE each (resume.py), so concurrent resumers resume it
once. docs/architecture.md, "Durable waits".
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NoReturn
from uuid import UUID

import structlog
from psycopg import sql
from psycopg.types.json import Jsonb

from conveyor.db import Connection, Database
from conveyor.errors import ServiceUnavailable
from conveyor.events import notifications
from conveyor.events.run_events import STATUS_UPDATE, EventPublisher, append_events
from conveyor.runs import children, credit_waits
from conveyor.runs.approvals import expired_output, notify_approver
from conveyor.runs.child_start import suspend_for_child
from conveyor.runs.resume import (
    FAIL_SET,
    RESUME_SET,
    STEP_WAITING,
    record_failed,
    step_waiting,
)
from conveyor.runs.resume import STEP_RESUMED as STEP_RESUMED
from conveyor.runs.resume import Resumed as Resumed
from conveyor.runs.resume import complete_wait as complete_wait
from conveyor.runs.store import ClaimedRun, status_data
from conveyor.runs.supervision import RunCancelled, RunSuspended
from conveyor.steps import WAIT_KINDS, WaitRequest
from conveyor.workflows.definitions import Workflow

log = structlog.get_logger(__name__)

TASK_WAKE_WAITING_RUNS = "maintenance.wake_waiting_runs"
WAKE_EVERY_SECONDS = 15
WAIT_TIMEOUT = "WAIT_TIMEOUT"

# Both waits whose timeout can fail the run (wait_for_event, approval) say so the same way.
FAILS_ON_TIMEOUT = frozenset({"event", "approval"})
FAIL_DUE_SQL = FAIL_SET + sql.SQL(
    """ where r.id = %(id)s and r.status = 'waiting'
   and r.wake_at <= coalesce(%(now)s::timestamptz, now())
   and exists (select 1 from workflow_steps s
                where s.run_id = r.id and s.position = %(position)s and s.status = 'waiting')
returning r.*
"""
)
RESUME_DUE_SQL = RESUME_SET + sql.SQL(
    """ where r.id = %(id)s and r.status = 'waiting'
   and r.wake_at <= coalesce(%(now)s::timestamptz, now())
   and exists (select 1 from workflow_steps s
                where s.run_id = r.id and s.position = %(position)s and s.status = 'waiting')
returning r.*, %(position)s::integer as wait_position
"""
)
# Admission's concurrency limit, applied when a timer would resume a run (docs/architecture.md,
# "Waiting is not execution"): with the run row locked (first, as every writer of a run row
# does before the account: a worker's checkpoint charging usage, erasure), the user's account
# row is locked as admit_run locks it, so two beat processes, or a beat and a submit, count
# one after the other; the count reads the partial index workflow_runs_user_unfinished. A user
# without an account row was never admitted and has no limit. A user at the limit keeps the
# run `waiting` and its timer moves on by one beat tick; the step keeps the wait's own end.
DEFER_SECONDS = WAKE_EVERY_SECONDS
LOCK_DUE_SQL = """
select r.user_id from workflow_runs r
 where r.id = %(id)s and r.status = 'waiting'
   and r.wake_at <= coalesce(%(now)s::timestamptz, now())
   and exists (select 1 from workflow_steps s
                where s.run_id = r.id and s.position = %(position)s and s.status = 'waiting')
   for no key update of r
"""
LOCK_ACCOUNT_SQL = """
select p.max_concurrent_runs from user_accounts a join plans p on p.id = a.plan_id
 where a.user_id = %s
   for update of a
"""
# A statement of its own, after the lock: its snapshot sees what the lock waited for.
IN_FLIGHT_SQL = """
select count(*) as n from workflow_runs
 where user_id = %s and status in ('queued', 'running')
"""
DEFER_SQL = """
update workflow_runs
   set wake_at = greatest(wake_at, now()) + make_interval(secs => %(delay)s), updated_at = now()
 where id = %(id)s and status = 'waiting'
"""
# The user's other due timers move on too (their own transaction, no account lock; run rows in
# id order, as erasure locks them), so one user's parked runs do not fill every tick's batch.
DEFER_USER_SQL = """
with due as (
  select r.id from workflow_runs r
    join workflow_steps s on s.run_id = r.id and s.status = 'waiting'
   where r.user_id = %(user)s and r.status = 'waiting'
     and r.wake_at <= coalesce(%(now)s::timestamptz, now())
     and not (s.wait ->> 'kind' in ('event', 'approval') and s.wait ->> 'on_timeout' = 'fail')
     and s.wait ->> 'kind' is distinct from 'credits'
   order by r.id
     for no key update of r
)
update workflow_runs r
   set wake_at = greatest(r.wake_at, now()) + make_interval(secs => %(delay)s), updated_at = now()
  from due
 where r.id = due.id and r.status = 'waiting'
"""


def suspend(
    db: Database,
    publisher: EventPublisher,
    claim: ClaimedRun,
    position: int,
    request: WaitRequest,
    spec_hash: str,
) -> NoReturn:
    """Commit the wait of the running step at position (run `waiting`, lease released), publish
    its events and raise RunSuspended. RunCancelled when the run is no longer this worker's or a
    cancel was asked for: finish_run then records the cancel, or refuses a lost lease."""
    if request.kind == "child":
        suspend_for_child(db, publisher, claim, position, request, spec_hash)
    with db.transaction() as conn:
        run = conn.execute(
            """
            update workflow_runs
               set status = 'waiting', lease_expires_at = null, waiting_since = now(),
                   wake_at = case when %(until)s::timestamptz is not null then %(until)s
                                  when %(seconds)s::float8 is not null
                                  then now() + make_interval(secs => %(seconds)s) end,
                   updated_at = now()
             where id = %(id)s and attempt = %(attempt)s and status = 'running'
               and cancel_requested_at is null
            returning *
            """,
            {
                "until": request.until,
                "seconds": request.seconds,
                "id": claim.id,
                "attempt": claim.attempt,
            },
        ).fetchone()
        if run is None:
            raise RunCancelled()
        wait = request.describe()
        # The step's fingerprint is kept from here to its completion (by a timer or a signal,
        # which do not know the definition), so a rerun can reuse the wait's output.
        step = conn.execute(
            "update workflow_steps set status = 'waiting', wake_at = %s, wait = %s, "
            "spec_hash = %s where run_id = %s and position = %s returning name",
            (run["wake_at"], Jsonb(wait), spec_hash, claim.id, position),
        ).fetchone()
        assert step is not None, "a claimed run has a row for every step"
        waiting = step_waiting(step["name"], position, run["wake_at"], wait)
        events = append_events(
            conn, claim.id, [(STEP_WAITING, waiting), (STATUS_UPDATE, status_data(run))]
        )
        notified = (
            notify_approver(conn, run, step["name"], request)
            if request.kind == "approval"
            else None
        )
    publisher.publish(*events)
    notifications.publish_notifications(publisher, [notified] if notified else [])
    raise RunSuspended()


def execution_seconds(db: Database, claim: ClaimedRun, workflow: Workflow) -> float:
    """Seconds the run has executed since it started: waits do not count against its timeout.
    Only a workflow that can wait pays the read: a wait step, or an `llm` step (parked for
    credits or a rate limit)."""
    elapsed = (datetime.now(UTC) - claim.started_at).total_seconds()
    if not any(spec.kind in WAIT_KINDS or spec.kind == "llm" for spec in workflow.steps):
        return elapsed
    with db.single_statement() as conn:
        row = conn.execute(
            "select waited_seconds from workflow_runs where id = %s", (claim.id,)
        ).fetchone()
    return max(0.0, elapsed - (float(row["waited_seconds"]) if row else 0.0))


def wake_due_runs(db: Database, *, now: datetime | None = None, limit: int = 500) -> list[Resumed]:
    """Resume every run whose timer ended by `now` (default: the database's now()), each in its
    own transaction: sleeps and `continue` timeouts are queued, `fail` timeouts fail the run. A
    user at the plan's max_concurrent_runs has their due timers deferred one tick instead."""
    with db.transaction() as conn:
        due = conn.execute(
            """
            select r.id, r.user_id, s.position, s.wait, coalesce(s.wake_at, r.wake_at) as wake_at
              from workflow_runs r
              join workflow_steps s on s.run_id = r.id and s.status = 'waiting'
             where r.status = 'waiting' and r.wake_at <= coalesce(%s::timestamptz, now())
             order by r.wake_at
             limit %s
            """,
            (now, limit),
        ).fetchall()
    woken: list[Resumed] = []
    at_limit: set[UUID] = set()  # users whose due timers were deferred by this call
    for candidate in due:
        wait = candidate["wait"] or {}
        fails = (
            wait.get("kind") in FAILS_ON_TIMEOUT and wait.get("on_timeout") == "fail"
        ) or wait.get("kind") == credit_waits.CREDITS  # no credits came in time
        if not fails and candidate["user_id"] in at_limit:
            continue
        done: Resumed | _AtLimit | None
        try:
            with db.transaction() as conn:
                if fails:
                    done = _fail_timed_out(conn, candidate, now)
                else:
                    done = _resume_due(conn, candidate, now)
            if done is AT_LIMIT:
                at_limit.add(candidate["user_id"])
                _defer_user(db, candidate["user_id"], now)
                continue
        except ServiceUnavailable:
            raise  # Postgres is down: the next tick tries every run again
        except Exception:
            # One run that cannot be resumed (a bug) must not hold back every run due after it.
            log.exception("wake_waiting_run_failed", run_id=str(candidate["id"]))
            continue
        if isinstance(done, Resumed):
            woken.append(done)
    return woken


class _AtLimit:
    """_resume_due's answer when the user is at the plan's concurrency limit."""


AT_LIMIT = _AtLimit()


def _defer_user(db: Database, user_id: UUID, now: datetime | None) -> None:
    with db.transaction() as conn:
        deferred = conn.execute(
            DEFER_USER_SQL, {"user": user_id, "now": now, "delay": DEFER_SECONDS}
        ).rowcount
    log.info("wake_deferred_at_concurrency_limit", user_id=str(user_id), runs=deferred + 1)


def _resume_due(
    conn: Connection, candidate: dict[str, Any], now: datetime | None
) -> Resumed | _AtLimit | None:
    params = {"id": candidate["id"], "now": now, "position": candidate["position"]}
    if conn.execute(LOCK_DUE_SQL, params).fetchone() is None:
        return None  # resumed, signalled or cancelled meanwhile: someone else's to report
    user_id = candidate["user_id"]
    account = conn.execute(LOCK_ACCOUNT_SQL, (user_id,)).fetchone()
    if account is not None:
        in_flight = conn.execute(IN_FLIGHT_SQL, (user_id,)).fetchone()
        assert in_flight is not None
        if in_flight["n"] >= account["max_concurrent_runs"]:
            conn.execute(DEFER_SQL, {"id": candidate["id"], "delay": DEFER_SECONDS})
            return AT_LIMIT
    wait = candidate["wait"] or {}
    if wait.get("kind") == credit_waits.RATE_LIMIT:
        # The step did not run: it runs again, rather than completing as a timer's wait does.
        return credit_waits.requeue(
            conn,
            candidate["id"],
            candidate["position"],
            credit_waits.RATE_LIMIT,
            resumed_by="timer",
            due=True,
            now=now,
        )
    run = conn.execute(RESUME_DUE_SQL, params).fetchone()
    if run is None:
        return None  # resumed, signalled or cancelled meanwhile: someone else's to report
    if wait.get("kind") == "event":
        return complete_wait(conn, run, {"timed_out": True}, resumed_by="timeout")
    if wait.get("kind") == "approval":
        return complete_wait(conn, run, expired_output(wait), resumed_by="timeout")
    output = {
        "wake_at": candidate["wake_at"].isoformat(),
        "resumed_at": datetime.now(UTC).isoformat(),
    }
    return complete_wait(conn, run, output, resumed_by="timer")


def _fail_timed_out(
    conn: Connection, candidate: dict[str, Any], now: datetime | None
) -> Resumed | None:
    wait = candidate["wait"]
    code = WAIT_TIMEOUT
    if wait.get("kind") == "approval":
        error = f"approver {wait.get('approver')} decided nothing before the approval expired"
    elif wait.get("kind") == credit_waits.CREDITS:
        code = credit_waits.INSUFFICIENT_CREDITS
        error = (
            f"the model call needed {wait.get('needed')} credits ({wait.get('available')} were "
            "free) and no credits arrived before the wait for credits ended; add credits and "
            "submit the run again"
        )
    else:
        error = f"no signal {wait.get('event')!r} came before the wait's timeout"
    params = {
        "id": candidate["id"],
        "now": now,
        "position": candidate["position"],
        "error": error,
        "code": code,
    }
    run = conn.execute(FAIL_DUE_SQL, params).fetchone()
    if run is None:
        return None
    failed = record_failed(
        conn, run, candidate["position"], error=error, code=code, resumed_by="timeout"
    )
    return children.with_parents(conn, run, failed)
