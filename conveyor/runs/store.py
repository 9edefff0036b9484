"""The run state machine: create, claim (lease + fencing attempt), finish, cancel. The reaper's
queries for lost runs are in conveyor/runs/reaper.py."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from conveyor import outbound
from conveyor.constants import DISPATCH_WINDOW
from conveyor.db import Connection, Database
from conveyor.errors import RunFinished, SessionNotFound
from conveyor.events import notifications
from conveyor.events.run_events import STATUS_UPDATE, RunEvent, append_event, append_events
from conveyor.ledger import reservations
from conveyor.ledger.usage import StepOwner
from conveyor.runs import children, sessions
from conveyor.runs.dispatch import Hold, dispatch_in
from conveyor.runs.new_runs import NewRun as NewRun
from conveyor.runs.new_runs import ParentLink as ParentLink
from conveyor.runs.new_runs import RunKind as RunKind
from conveyor.runs.new_runs import existing_run as existing_run
from conveyor.runs.new_runs import insert_run as insert_run
from conveyor.runs.payloads import RunView
from conveyor.runs.run_rows import STEP_FAILED as STEP_FAILED
from conveyor.runs.run_rows import close_unfinished_steps as close_unfinished_steps
from conveyor.runs.run_rows import status_data as status_data
from conveyor.runs.step_rows import CompletedStep, mark_completed
from conveyor.runs.views import get_run, require_visible


@dataclass(frozen=True)
class StepState:
    """A step of a claimed run as stored: completed ones are skipped on resume."""

    position: int
    name: str
    status: str
    attempt: int
    output: Any
    output_url: str | None


@dataclass(frozen=True)
class ClaimedRun:
    """A run this worker now holds; `attempt` fences every later write."""

    id: UUID
    user_id: UUID
    kind: str
    workflow_id: str
    input: dict[str, Any]
    attempt: int
    session_id: UUID | None
    started_at: datetime
    steps: list[StepState]

    def owner(self) -> StepOwner:
        """Whose run this is, for the usage ledger."""
        return StepOwner(self.id, self.user_id, self.session_id, self.workflow_id)


def create_run(
    db: Database,
    *,
    user_id: UUID,
    kind: RunKind,
    workflow_id: str,
    input: dict[str, Any],
    metadata: dict[str, Any],
    steps: Sequence[tuple[str, str]],
    idempotency_key: str | None = None,
    session_id: UUID | None = None,
    admit: bool = False,
    webhook_url: str | None = None,
    prepare: Callable[[Connection, UUID], None] | None = None,
    hold: Hold | None = None,
) -> NewRun:
    """Insert a queued run with its (name, kind) steps pending; with an idempotency key this user
    already used, return that run instead. With `admit`, the plan's limits are checked and the
    job's credits taken in the same transaction (RateLimited, QuotaExceeded, ... roll it back).
    `prepare(conn, run_id)` completes the new run in that transaction (a rerun's reused steps)."""
    with db.transaction() as conn:
        return insert_run(
            conn,
            user_id=user_id,
            kind=kind,
            workflow_id=workflow_id,
            input=input,
            metadata=metadata,
            steps=steps,
            idempotency_key=idempotency_key,
            session_id=session_id,
            admit=admit,
            webhook_url=webhook_url,
            prepare=prepare,
            hold=hold,
        )


def claim_run(
    db: Database, run_id: UUID, *, lease_seconds: int
) -> tuple[ClaimedRun, RunEvent] | None:
    """Take a queued run, or a running one whose lease expired, and start its first unfinished
    step; None when it is not claimable. One round trip: conveyor_claim_run (sql/) does it all."""
    with db.single_statement() as conn:
        row = conn.execute(
            "select * from conveyor_claim_run(%s, %s)", (run_id, lease_seconds)
        ).fetchone()
    if row is None:
        return None
    claimed = ClaimedRun(
        id=row["id"],
        user_id=row["user_id"],
        kind=row["kind"],
        workflow_id=row["workflow_id"],
        input=row["input"],
        attempt=row["attempt"],
        session_id=row["session_id"],
        started_at=row["started_at"],
        steps=[StepState(**step) for step in row["steps"]],
    )
    event = RunEvent(
        run_id=run_id,
        seq=row["event_seq"],
        event=STATUS_UPDATE,
        data=row["event_data"],
        ts=row["event_at"],
    )
    return claimed, event


@dataclass(frozen=True)
class Outcome:
    """How a claimed run ends: an output, or an error (with the step that failed, if one did)."""

    output: Any = None
    output_url: str | None = None
    error: str | None = None
    error_code: str | None = None
    failed_position: int | None = None
    # Appended to the run's session as the assistant's message when the run completes.
    reply: str | None = None
    # The last step, checkpointed in the run's final transaction: one commit fewer per run.
    last_step: CompletedStep | None = None


def finish_run(
    db: Database,
    claim: ClaimedRun,
    outcome: Outcome,
    *,
    deliveries: list[UUID] | None = None,
    resumed: list[UUID] | None = None,
    dispatch_window: int = DISPATCH_WINDOW,
) -> list[RunEvent] | None:
    """Record how a claimed run ended (cancelled if a cancel was requested meanwhile) and close its
    unfinished steps; returns the events, the final status last. None: the lease was lost and a
    successor owns the run. The run's webhook deliveries are appended to `deliveries`, and the
    runs its end made runnable to `resumed`, to queue after commit."""
    status = "failed" if outcome.error is not None else "completed"
    with db.transaction() as conn:
        row = conn.execute(
            """
            update workflow_runs
               set status = case when cancel_requested_at is null then %(status)s
                                 else 'cancelled' end,
                   output = case when cancel_requested_at is null then %(output)s::jsonb end,
                   output_url = case when cancel_requested_at is null then %(url)s end,
                   error = case when cancel_requested_at is null then %(error)s end,
                   error_code = case when cancel_requested_at is null then %(code)s end,
                   progress = case when %(status)s = 'completed' and cancel_requested_at is null
                                   then 1 else progress end,
                   current_step = null, lease_expires_at = null,
                   finished_at = now(), updated_at = now()
             where id = %(id)s and attempt = %(attempt)s and status = 'running'
            returning *
            """,
            {
                "status": status,
                "output": Jsonb(outcome.output) if outcome.output is not None else None,
                "url": outcome.output_url,
                "error": outcome.error,
                "code": outcome.error_code,
                "id": claim.id,
                "attempt": claim.attempt,
            },
        ).fetchone()
        if row is None:
            return None
        events: list[tuple[str, dict[str, Any]]] = []
        if outcome.last_step is not None:
            events += mark_completed(conn, claim.owner(), outcome.last_step)
        for closed in close_unfinished_steps(
            conn,
            claim.id,
            run_status=row["status"],
            failed_position=outcome.failed_position,
            error=outcome.error,
            error_code=outcome.error_code,
        ):
            if closed["status"] == "failed":
                events.append((STEP_FAILED, closed))
        # Holds its steps left (an attempt that ended with its worker) go with the run.
        reservations.release_run(conn, claim.id)
        if row["status"] == "completed" and claim.session_id and outcome.reply:
            # A session deleted meanwhile does not undo the run's result.
            with contextlib.suppress(SessionNotFound):
                sessions.append_message(
                    conn, claim.session_id, role="assistant", content=outcome.reply, run_id=claim.id
                )
        events.append((STATUS_UPDATE, status_data(row)))
        # Websocket subscribers of the user's notifications are nudged by this final status event
        # (web/realtime.py), so finish_run publishes nothing more.
        notifications.notify_run_finished(conn, row)
        # The outbox: the run.* webhook event commits with the status it reports.
        created = outbound.record_run_finished(conn, row)
        # A child's end resumes (or fails) the parent waiting for it, in this transaction.
        parents = children.child_ended(conn, row)
        for parent in parents:
            created += parent.deliveries
            if parent.queued and resumed is not None:
                resumed.append(parent.run_id)
        if deliveries is not None:
            deliveries.extend(created)
        if resumed is not None and (row["concurrency_key"] or row["priority"] is not None):
            # A held run's end frees its key's slot (or the window): the next held runs go out
            # with this commit, published by the caller with the resumed parents.
            resumed.extend(dispatch_in(conn, dispatch_window))
        ended = append_events(conn, claim.id, events)
        # The final status stays last: execute_run reads it there.
        return [event for parent in parents for event in parent.events] + ended


def cancel_run(
    db: Database, claims: dict[str, Any], run_id: UUID
) -> tuple[RunView, list[RunEvent], UUID]:
    """Cancel a queued or waiting run now, or ask a running one to stop; only its owner or an
    admin may. Returns the run, the events to publish (its awaited descendants', a parent its
    cancel failed, its own last), and the owner's id."""
    require_visible(db, claims, run_id)
    with db.transaction() as conn:
        # Children before their parent, the order a child's end locks them in.
        children.lock_descendants(conn, run_id)
        row = conn.execute(
            """
            update workflow_runs
               set status = case when status in ('queued', 'waiting') then 'cancelled'
                                 else status end,
                   finished_at = case when status in ('queued', 'waiting') then now()
                                      else finished_at end,
                   cancel_requested_at = coalesce(cancel_requested_at, now()),
                   wake_at = null, waiting_since = null,
                   updated_at = now()
             where id = %s and status in ('queued', 'running', 'waiting')
            returning *
            """,
            (run_id,),
        ).fetchone()
        if row is None:
            raise RunFinished(f"run {run_id} has already finished; there is nothing to cancel")
        # Its awaited children (and theirs) are cancelled with it; detached ones go on.
        events = children.cancel_descendants(conn, run_id)
        if row["status"] == "cancelled":
            events += record_cancelled(conn, row)
        else:
            events.append(append_event(conn, run_id, STATUS_UPDATE, status_data(row)))
    return get_run(db, claims, run_id), events, row["user_id"]


def record_cancelled(conn: Connection, row: dict[str, Any]) -> list[RunEvent]:
    """In the transaction that made a run cancelled without its worker (queued, waiting, or
    abandoned): close its steps, queue its run.cancelled webhook event and append its status
    event; a parent waiting for it fails (CHILD_CANCELLED). The events, this run's first."""
    close_unfinished_steps(conn, row["id"], run_status="cancelled")
    # Sent by the re-queue job's next tick (beat, every 30 s): the caller answers at once.
    outbound.record_run_finished(conn, row, queued=False)
    event = append_event(conn, row["id"], STATUS_UPDATE, status_data(row))
    # A cancelled child fails the step of the parent waiting for it (CHILD_CANCELLED).
    return [event, *(e for ended in children.child_ended(conn, row) for e in ended.events)]
