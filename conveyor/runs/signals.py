"""Signals: `POST /api/runs/<id>/signals/<name>` resumes a run waiting for that event, with one
conditional UPDATE, so of two signals at once only the first resumes it. docs/architecture.md,
"Durable waits" (Signals)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg import sql
from pydantic import Field, field_validator

from conveyor.db import Connection, Database
from conveyor.errors import Conflict, RunNotFound
from conveyor.payload import Payload
from conveyor.runs.resume import RESUME_SET, Resumed, complete_wait

# A service token with this scope may signal any user's run (a backend relaying an event).
RUNS_SIGNAL_SCOPE = "runs:signal"
EVENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"


class SignalRequest(Payload):
    """`POST /api/runs/<id>/signals/<name>`: the match key the wait expects (if it has one), and
    the payload that becomes the waiting step's output."""

    match: str | None = Field(default=None, min_length=1, max_length=500)
    payload: Any = None

    @field_validator("match", mode="before")
    @classmethod
    def _an_integer_key_is_its_text(cls, value: Any) -> Any:
        # A wait's match rendered from an integer id is compared as text; so is the signal's.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value


class RunNotWaiting(Conflict):
    """The run is not waiting for that event."""

    code = "RUN_NOT_WAITING"


class SignalAlreadyDelivered(Conflict):
    """A signal for that event already resumed the run; this one changed nothing."""

    code = "SIGNAL_ALREADY_DELIVERED"


class SignalMatchMismatch(Conflict):
    """The run waits for that event with another match key."""

    code = "SIGNAL_MATCH_MISMATCH"


class WaitTimedOut(Conflict):
    """The wait's deadline passed: the timeout decides, not a late signal."""

    code = "WAIT_TIMED_OUT"


# A signal resumes the run even when its user is at the plan's concurrency limit (the beat's
# timer defers instead): it is one explicit request for one run, paced by its sender, and the
# caller is told it was delivered. The deadline is the waiting step's wake_at, which a deferral
# of the run's timer at the limit leaves alone: after it, the timeout decides.
SIGNAL_SQL = RESUME_SET + sql.SQL(
    """  from workflow_steps w
 where r.id = %(id)s and r.status = 'waiting'
   and w.run_id = r.id and w.status = 'waiting' and (w.wake_at is null or w.wake_at > now())
   and w.wait ->> 'kind' = 'event'
   and w.wait ->> 'event' = %(event)s
   and (w.wait ->> 'match' is null or w.wait ->> 'match' = %(match)s)
returning r.*, w.position as wait_position
"""
)


def deliver_signal(db: Database, run_id: UUID, event: str, signal: SignalRequest) -> Resumed:
    """Resume run_id, waiting for `event`, with the signal's payload as the step's output; the
    caller publishes the events and the run after commit. 404 for no such run; 409 when the run
    is not waiting for it (see the error codes above)."""
    with db.transaction() as conn:
        run = conn.execute(
            SIGNAL_SQL, {"id": run_id, "event": event, "match": signal.match}
        ).fetchone()
        if run is None:
            raise refusal(conn, run_id, event, signal.match)
        return complete_wait(conn, run, signal.payload, resumed_by="signal", signal=event)


def refusal(conn: Connection, run_id: UUID, event: str, match: str | None) -> Exception:
    """Why a signal resumed nothing (read after the conditional UPDATE, which also waited for a
    concurrent resume to commit)."""
    run = conn.execute(
        "select status, wake_at <= now() as timed_out from workflow_runs where id = %s",
        (run_id,),
    ).fetchone()
    if run is None:
        return RunNotFound(f"run {run_id} does not exist")
    waiting = conn.execute(
        "select name, wait from workflow_steps where run_id = %s and status = 'waiting'",
        (run_id,),
    ).fetchone()
    step = waiting["name"] if waiting is not None else None
    wait: dict[str, Any] = (waiting["wait"] if waiting is not None else None) or {}
    if run["status"] == "waiting" and wait.get("kind") == "event" and wait["event"] == event:
        if wait.get("match") is not None and wait["match"] != match:
            return SignalMatchMismatch(
                f"run {run_id} waits for {event!r} with another match key", step=step
            )
        return WaitTimedOut(
            f"run {run_id} stopped waiting for {event!r} at its deadline; "
            "the timeout decides what happens next",
            step=step,
        )
    delivered = conn.execute(
        "select name from workflow_steps where run_id = %s and status = 'completed' "
        "and wait ->> 'event' = %s and wait ->> 'resumed_by' = 'signal' limit 1",
        (run_id, event),
    ).fetchone()
    if delivered is not None:
        return SignalAlreadyDelivered(
            f"a signal {event!r} already resumed run {run_id} (step {delivered['name']!r})",
            step=delivered["name"],
        )
    waits_for = wait.get("event") if wait.get("kind") == "event" else wait.get("kind")
    return RunNotWaiting(
        f"run {run_id} is not waiting for {event!r} (it is {run['status']})",
        status=run["status"],
        waiting_for=waits_for,
    )
