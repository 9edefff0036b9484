"""The run state machine: create, claim (lease + fencing attempt), finish, cancel. The reaper's
queries for lost runs are in conveyor/runs/reaper.py."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg.types.json import Jsonb

from conveyor import ledger, outbound
from conveyor.db import Connection, Database
from conveyor.errors import IdempotencyKeyReused, RunFinished, SessionNotFound
from conveyor.events import notifications
from conveyor.events.run_events import STATUS_UPDATE, RunEvent, append_event, append_events
from conveyor.ledger.usage import StepOwner
from conveyor.runs import sessions
from conveyor.runs.payloads import RunView
from conveyor.runs.run_rows import STEP_FAILED as STEP_FAILED
from conveyor.runs.run_rows import close_unfinished_steps as close_unfinished_steps
from conveyor.runs.run_rows import status_data as status_data
from conveyor.runs.step_rows import CompletedStep, mark_completed
from conveyor.runs.views import get_run, require_visible

RunKind = Literal["agent", "workflow"]


@dataclass(frozen=True)
class NewRun:
    """The result of a submit: the run and whether this call created it."""

    id: UUID
    status: str
    created: bool
    event: RunEvent | None


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
) -> NewRun:
    """Insert a queued run with its (name, kind) steps pending; with an idempotency key this user
    already used, return that run instead. With `admit`, the plan's limits are checked and the
    job's credits taken in the same transaction (RateLimited, QuotaExceeded, ... roll it back).
    `prepare(conn, run_id)` completes the new run in that transaction (a rerun's reused steps)."""
    with db.transaction() as conn:
        # The run starts at event seq 1: its first event is inserted below, not appended.
        row = conn.execute(
            """
            insert into workflow_runs
              (user_id, kind, workflow_id, input, metadata, idempotency_key, session_id,
               webhook_url, last_event_seq)
            values (%s, %s, %s, %s, %s, %s, %s, %s, 1)
            on conflict (user_id, idempotency_key) do nothing
            returning *
            """,
            (
                user_id,
                kind,
                workflow_id,
                Jsonb(input),
                Jsonb(metadata),
                idempotency_key,
                session_id,
                webhook_url,
            ),
        ).fetchone()
        if row is None:
            return existing_run(conn, user_id, idempotency_key, kind, workflow_id, input)
        data = status_data(row)
        # One round trip for the rest: admission, the steps and the first event are pipelined,
        # and a refusal read afterwards still rolls all of them back with the transaction.
        with conn.pipeline():
            admission = (
                ledger.start_admission(conn, user_id, row["id"], f"{kind}:{workflow_id}")
                if admit
                else None
            )
            conn.execute(
                """
                insert into workflow_steps (run_id, position, name, kind)
                select %s, ordinality - 1, step ->> 0, step ->> 1
                  from jsonb_array_elements(%s::jsonb) with ordinality as s(step, ordinality)
                """,
                (row["id"], json.dumps([list(step) for step in steps])),
            )
            first = conn.execute(
                "insert into run_events (run_id, seq, event, data) "
                "values (%s, 1, %s, %s) returning created_at",
                (row["id"], STATUS_UPDATE, Jsonb(data)),
            )
        if admission is not None:
            ledger.admission_verdict(admission)
        if prepare is not None:
            prepare(conn, row["id"])
        created = first.fetchone()
        assert created is not None
    event = RunEvent(
        run_id=row["id"], seq=1, event=STATUS_UPDATE, data=data, ts=created["created_at"]
    )
    return NewRun(row["id"], row["status"], created=True, event=event)


def existing_run(
    conn: Connection,
    user_id: UUID,
    idempotency_key: str | None,
    kind: RunKind,
    workflow_id: str,
    input: dict[str, Any],
) -> NewRun:
    """The run this user already submitted with idempotency_key; IdempotencyKeyReused when it
    was a different request."""
    existing = conn.execute(
        "select id, status, kind, workflow_id, input from workflow_runs "
        "where user_id = %s and idempotency_key = %s",
        (user_id, idempotency_key),
    ).fetchone()
    assert existing is not None, "conflict without a row: the key must exist"
    if (existing["kind"], existing["workflow_id"], existing["input"]) != (kind, workflow_id, input):
        raise IdempotencyKeyReused(
            f"Idempotency-Key {idempotency_key!r} was already used for run "
            f"{existing['id']} with a different request; use a new key for a new run."
        )
    return NewRun(existing["id"], existing["status"], created=False, event=None)


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
        if deliveries is not None:
            deliveries.extend(created)
        return append_events(conn, claim.id, events)


def cancel_run(
    db: Database, claims: dict[str, Any], run_id: UUID
) -> tuple[RunView, RunEvent, UUID]:
    """Cancel a queued or waiting run now, or ask a running one to stop; only its owner or an
    admin may. Returns the run, the event, and the owner's id."""
    require_visible(db, claims, run_id)
    with db.transaction() as conn:
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
        if row["status"] == "cancelled":
            event = record_cancelled(conn, row)
        else:
            event = append_event(conn, run_id, STATUS_UPDATE, status_data(row))
    return get_run(db, claims, run_id), event, row["user_id"]


def record_cancelled(conn: Connection, row: dict[str, Any]) -> RunEvent:
    """In the transaction that made a run cancelled without its worker (queued, waiting, or
    abandoned): close its steps, queue its run.cancelled webhook event and append its status
    event."""
    close_unfinished_steps(conn, row["id"], run_status="cancelled")
    # Sent by the re-queue job's next tick (beat, every 30 s): the caller answers at once.
    outbound.record_run_finished(conn, row, queued=False)
    return append_event(conn, row["id"], STATUS_UPDATE, status_data(row))
