"""The run state machine: create, claim (lease + fencing attempt), finish, find lost runs, read."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg.types.json import Jsonb

from conveyor.db import Connection, Database
from conveyor.errors import InvalidInput, RunFinished, RunNotFound
from conveyor.events import STATUS_UPDATE, RunEvent, append_event
from conveyor.models import RunSummary, RunView, StepView

RunKind = Literal["agent", "workflow"]


@dataclass(frozen=True)
class NewRun:
    """The result of a submit: the run and whether this call created it."""

    id: UUID
    status: str
    created: bool
    event: RunEvent | None


@dataclass(frozen=True)
class ClaimedRun:
    """A run this worker now holds; `attempt` fences every later write."""

    id: UUID
    user_id: UUID
    kind: str
    workflow_id: str
    input: dict[str, Any]
    attempt: int


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
    }


def create_run(
    db: Database,
    *,
    user_id: UUID,
    kind: RunKind,
    workflow_id: str,
    input: dict[str, Any],
    metadata: dict[str, Any],
    idempotency_key: str | None = None,
) -> NewRun:
    """Insert a queued run; with an idempotency key already used by this user, return that run."""
    with db.transaction() as conn:
        row = conn.execute(
            """
            insert into public.workflow_runs
              (user_id, kind, workflow_id, input, metadata, idempotency_key)
            values (%s, %s, %s, %s, %s, %s)
            on conflict (user_id, idempotency_key) do nothing
            returning *
            """,
            (user_id, kind, workflow_id, Jsonb(input), Jsonb(metadata), idempotency_key),
        ).fetchone()
        if row is None:
            existing = conn.execute(
                "select id, status from public.workflow_runs "
                "where user_id = %s and idempotency_key = %s",
                (user_id, idempotency_key),
            ).fetchone()
            assert existing is not None, "conflict without a row: the key must exist"
            return NewRun(existing["id"], existing["status"], created=False, event=None)
        event = append_event(conn, row["id"], STATUS_UPDATE, status_data(row))
    return NewRun(row["id"], row["status"], created=True, event=event)


def claim_run(
    db: Database, run_id: UUID, *, lease_seconds: int
) -> tuple[ClaimedRun, RunEvent] | None:
    """Take a queued run, or a running one whose lease expired; None when it is not claimable."""
    with db.transaction() as conn:
        row = conn.execute(
            """
            update public.workflow_runs
               set status = 'running',
                   attempt = attempt + 1,
                   lease_expires_at = now() + make_interval(secs => %s),
                   heartbeat_at = now(),
                   started_at = coalesce(started_at, now()),
                   current_step = workflow_id,
                   updated_at = now()
             where id = %s
               and cancel_requested_at is null
               and (status = 'queued' or (status = 'running' and lease_expires_at < now()))
            returning *
            """,
            (lease_seconds, run_id),
        ).fetchone()
        if row is None:
            return None
        event = append_event(conn, run_id, STATUS_UPDATE, status_data(row))
    claimed = ClaimedRun(
        id=row["id"],
        user_id=row["user_id"],
        kind=row["kind"],
        workflow_id=row["workflow_id"],
        input=row["input"],
        attempt=row["attempt"],
    )
    return claimed, event


def finish_run(
    db: Database,
    claim: ClaimedRun,
    *,
    output: dict[str, Any] | None = None,
    error: str | None = None,
    error_code: str | None = None,
) -> RunEvent | None:
    """Record the outcome of a claimed run (failed when error is set). None: the lease was lost."""
    status = "failed" if error is not None else "completed"
    with db.transaction() as conn:
        row = conn.execute(
            """
            update public.workflow_runs
               set status = case when cancel_requested_at is null then %s else 'cancelled' end,
                   output = case when cancel_requested_at is null then %s::jsonb end,
                   error = %s, error_code = %s,
                   progress = case when %s = 'completed' and cancel_requested_at is null
                                   then 1 else progress end,
                   current_step = null, lease_expires_at = null,
                   finished_at = now(), updated_at = now()
             where id = %s and attempt = %s and status = 'running'
            returning *
            """,
            (
                status,
                Jsonb(output) if output is not None else None,
                error,
                error_code,
                status,
                claim.id,
                claim.attempt,
            ),
        ).fetchone()
        if row is None:
            return None
        record_single_step(conn, claim, status=row["status"], output=row["output"], error=error)
        return append_event(conn, claim.id, STATUS_UPDATE, status_data(row))


def record_single_step(
    conn: Connection,
    claim: ClaimedRun,
    *,
    status: str,
    output: dict[str, Any] | None,
    error: str | None,
) -> None:
    """Record the single step of an agent run (workflows checkpoint each step themselves)."""
    conn.execute(
        """
        insert into public.workflow_steps
          (run_id, position, name, kind, status, attempt, output, error, started_at, finished_at)
        select %s, 0, %s, 'agent', %s, %s, %s, %s, r.started_at, now()
          from public.workflow_runs r where r.id = %s
        on conflict (run_id, position) do update
          set status = excluded.status, attempt = excluded.attempt, output = excluded.output,
              error = excluded.error, finished_at = excluded.finished_at
        """,
        (
            claim.id,
            claim.workflow_id,
            status,
            claim.attempt,
            Jsonb(output) if output is not None else None,
            error,
            claim.id,
        ),
    )


def runs_to_republish(db: Database, *, older_than_seconds: int, limit: int = 500) -> list[UUID]:
    """Runs that look lost (queued too long, or a lease that expired) and mark them republished."""
    with db.transaction() as conn:
        rows = conn.execute(
            """
            update public.workflow_runs
               set enqueued_at = now()
             where id in (
               select id from public.workflow_runs
                where (status = 'queued'
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


def parse_run_id(raw: str) -> UUID:
    """A run id from a URL; anything that is not a UUID cannot name a run."""
    try:
        return UUID(raw)
    except ValueError:
        raise RunNotFound(f"run {raw!r} does not exist") from None


def require_visible(db: Database, claims: dict[str, Any], run_id: UUID) -> None:
    """RunNotFound unless RLS lets the caller see the run (owner or admin)."""
    with db.user_transaction(claims) as conn:
        found = conn.execute(
            "select 1 from public.workflow_runs where id = %s", (run_id,)
        ).fetchone()
    if found is None:
        raise RunNotFound(f"run {run_id} does not exist")


def get_run(db: Database, claims: dict[str, Any], run_id: UUID) -> RunView:
    """A run and its steps as the caller may see them under RLS; someone else's run is not found."""
    with db.user_transaction(claims) as conn:
        row = conn.execute("select * from public.workflow_runs where id = %s", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"run {run_id} does not exist")
        steps = conn.execute(
            "select position, name, kind, status, attempt, started_at, finished_at, error "
            "from public.workflow_steps where run_id = %s order by position",
            (run_id,),
        ).fetchall()
    return RunView(
        id=row["id"],
        kind=row["kind"],
        workflow_id=row["workflow_id"],
        status=row["status"],
        progress=row["progress"],
        current_step=row["current_step"],
        input=row["input"],
        metadata=row["metadata"],
        output=row["output"],
        error=row["error"],
        error_code=row["error_code"],
        attempts=row["attempt"],
        steps=[StepView.model_validate(step) for step in steps],
        cancel_requested_at=row["cancel_requested_at"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
    )


def cancel_run(
    db: Database, claims: dict[str, Any], run_id: UUID
) -> tuple[RunView, RunEvent, UUID]:
    """Cancel a queued run now, or ask a running one to stop; only its owner or an admin may.
    Returns the run, the event, and the owner's id."""
    require_visible(db, claims, run_id)
    with db.transaction() as conn:
        row = conn.execute(
            """
            update public.workflow_runs
               set status = case when status = 'queued' then 'cancelled' else status end,
                   finished_at = case when status = 'queued' then now() else finished_at end,
                   cancel_requested_at = coalesce(cancel_requested_at, now()),
                   updated_at = now()
             where id = %s and status in ('queued', 'running')
            returning *
            """,
            (run_id,),
        ).fetchone()
        if row is None:
            raise RunFinished(f"run {run_id} has already finished; there is nothing to cancel")
        event = append_event(conn, run_id, STATUS_UPDATE, status_data(row))
    return get_run(db, claims, run_id), event, row["user_id"]


def finalize_abandoned_cancellations(db: Database) -> list[RunEvent]:
    """Runs asked to cancel whose worker vanished (lease expired) end as cancelled."""
    events = []
    with db.transaction() as conn:
        rows = conn.execute(
            """
            update public.workflow_runs
               set status = 'cancelled', finished_at = now(), updated_at = now(),
                   lease_expires_at = null, current_step = null
             where status = 'running' and cancel_requested_at is not null
               and lease_expires_at < now()
            returning *
            """
        ).fetchall()
        for row in rows:
            events.append(append_event(conn, row["id"], STATUS_UPDATE, status_data(row)))
    return events


@dataclass(frozen=True)
class RunPage:
    """One page of runs, newest first, and the cursor for the next page (None at the end)."""

    runs: list[RunSummary]
    next_cursor: str | None


def encode_cursor(created_at: datetime, run_id: UUID) -> str:
    """An opaque cursor pointing just past (created_at, id)."""
    raw = f"{created_at.isoformat()}|{run_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The (created_at, id) a cursor points past, or InvalidInput."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, _, run_id = base64.urlsafe_b64decode(padded).decode().partition("|")
        return datetime.fromisoformat(created), UUID(run_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not one this API returned; start without it.") from exc


def list_runs(
    db: Database,
    claims: dict[str, Any],
    *,
    user_id: UUID,
    status: str | None,
    workflow_id: str | None,
    limit: int,
    cursor: str | None,
) -> RunPage:
    """A user's runs under RLS, newest first, keyset-paginated."""
    after = decode_cursor(cursor) if cursor else None
    with db.user_transaction(claims) as conn:
        rows = conn.execute(
            """
            select id, kind, workflow_id, status, progress, current_step, error_code,
                   created_at, started_at, finished_at
              from public.workflow_runs
             where user_id = %(user)s
               and (%(status)s::text is null or status = %(status)s)
               and (%(workflow)s::text is null or workflow_id = %(workflow)s)
               and (%(after_ts)s::timestamptz is null
                    or (created_at, id) < (%(after_ts)s, %(after_id)s::uuid))
             order by created_at desc, id desc
             limit %(limit)s
            """,
            {
                "user": user_id,
                "status": status,
                "workflow": workflow_id,
                "after_ts": after[0] if after else None,
                "after_id": after[1] if after else None,
                "limit": limit + 1,
            },
        ).fetchall()
    page = [RunSummary.model_validate(row) for row in rows[:limit]]
    more = len(rows) > limit
    return RunPage(page, encode_cursor(page[-1].created_at, page[-1].id) if more else None)
