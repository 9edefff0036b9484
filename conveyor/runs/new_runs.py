"""Inserting a run: a submit's, a rerun's, or a child run's in its parent's transaction."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from psycopg.types.json import Jsonb

from conveyor import ledger
from conveyor.db import Connection
from conveyor.errors import IdempotencyKeyReused
from conveyor.events.run_events import STATUS_UPDATE, RunEvent
from conveyor.runs.dispatch import Hold
from conveyor.runs.run_rows import status_data

RunKind = Literal["agent", "workflow"]


@dataclass(frozen=True)
class NewRun:
    """The result of a submit: the run and whether this call created it."""

    id: UUID
    status: str
    created: bool
    event: RunEvent | None


@dataclass(frozen=True)
class ParentLink:
    """A child run's parent: the run, the position of its `workflow` step (or `map`, with the
    item the child is for), whether it waits."""

    run_id: UUID
    step: int
    awaits: bool
    item: int | None = None


def insert_run(
    conn: Connection,
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
    parent: ParentLink | None = None,
    hold: Hold | None = None,
) -> NewRun:
    """create_run in the caller's transaction (a child run commits with its parent's wait).
    With `hold`, the run waits undispatched for conveyor_dispatch_runs."""
    # The run starts at event seq 1: its first event is inserted below, not appended.
    row = conn.execute(
        """
        insert into workflow_runs
          (user_id, kind, workflow_id, input, metadata, idempotency_key, session_id,
           webhook_url, last_event_seq, parent_run_id, parent_step, parent_awaits, parent_item,
           concurrency_key, concurrency_limit, priority, dispatched_at, not_before)
        values (%s, %s, %s, %s, %s, %s, %s, %s, 1, %s, %s, %s, %s, %s, %s, %s,
                case when %s then null else now() end,
                now() + make_interval(secs => %s))
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
            parent.run_id if parent else None,
            parent.step if parent else None,
            parent.awaits if parent else False,
            parent.item if parent else None,
            hold.concurrency_key if hold else None,
            hold.concurrency_limit if hold else None,
            hold.priority if hold else None,
            hold is not None,
            hold.debounce_seconds if hold else None,
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
