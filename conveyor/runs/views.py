"""What callers read about runs, always under RLS: one run, a page of runs, a run's event log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from conveyor.db import Database
from conveyor.errors import RunNotFound
from conveyor.events.run_events import RunEvent
from conveyor.pagination import Listing, user_page
from conveyor.runs.children import children_of
from conveyor.runs.payloads import ChildRunView, RunSummary, RunView, StepView
from conveyor.runs.run_rows import waiting_for
from conveyor.steps.child import CHILD
from conveyor.steps.map import MAP


def parse_run_id(raw: str) -> UUID:
    """A run id from a URL; anything that is not a UUID cannot name a run."""
    try:
        return UUID(raw)
    except ValueError:
        raise RunNotFound(f"run {raw!r} does not exist") from None


def require_visible(db: Database, claims: dict[str, Any], run_id: UUID) -> None:
    """RunNotFound unless RLS lets the caller see the run (owner or admin)."""
    with db.user_transaction(claims) as conn:
        found = conn.execute("select 1 from workflow_runs where id = %s", (run_id,)).fetchone()
    if found is None:
        raise RunNotFound(f"run {run_id} does not exist")


def get_run(db: Database, claims: dict[str, Any], run_id: UUID) -> RunView:
    """A run and its steps as the caller may see them under RLS; someone else's run is not found."""
    with db.user_transaction(claims) as conn, conn.pipeline():
        # Both reads in one round trip; a missing run simply has no visible steps either.
        run = conn.execute("select * from workflow_runs where id = %s", (run_id,))
        step_rows = conn.execute(
            """
            select position, name, kind, status, attempt, started_at, finished_at,
                   (extract(epoch from finished_at - started_at) * 1000)::bigint as duration_ms,
                   output, output_url, usage, error, error_code, reused_from,
                   wake_at, wait
              from workflow_steps where run_id = %s order by position
            """,
            (run_id,),
        )
        row = run.fetchone()
        if row is None:
            raise RunNotFound(f"run {run_id} does not exist")
        steps = step_rows.fetchall()
    kids = _children(db, claims, run_id, steps)
    return RunView(
        id=row["id"],
        kind=row["kind"],
        workflow_id=row["workflow_id"],
        status=row["status"],
        progress=row["progress"],
        current_step=row["current_step"],
        session_id=row["session_id"],
        input=row["input"],
        metadata=row["metadata"],
        output=row["output"],
        output_url=row["output_url"],
        error=row["error"],
        error_code=row["error_code"],
        attempts=row["attempt"],
        waiting_for=waiting_for(row, steps),
        concurrency_key=row["concurrency_key"],
        priority=row["priority"],
        steps=[StepView.model_validate(step) for step in steps],
        cancel_requested_at=row["cancel_requested_at"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        rerun_of=row["rerun_of"],
        rerun_from_step=row["rerun_from_step"],
        wake_at=row["wake_at"],
        parent_run_id=row["parent_run_id"],
        parent_step=row["parent_step"],
        children=kids,
        children_usage=_usage_total(kids) if kids else None,
    )


def _children(
    db: Database, claims: dict[str, Any], run_id: UUID, steps: list[dict[str, Any]]
) -> list[ChildRunView]:
    """A run's child runs; read only when it has a `workflow` step (one read fewer otherwise)."""
    if not any(step["kind"] in (CHILD, MAP) for step in steps):  # a map's items may be children
        return []
    with db.user_transaction(claims) as conn:
        return [ChildRunView.model_validate(child) for child in children_of(conn, run_id)]


def _usage_total(kids: list[ChildRunView]) -> dict[str, int]:
    return {
        "calls": sum(kid.calls for kid in kids),
        "total_tokens": sum(kid.total_tokens for kid in kids),
        "cost_micro_usd": sum(kid.cost_micro_usd for kid in kids),
        "credits_charged": sum(kid.credits_charged for kid in kids),
    }


def list_events(
    db: Database, claims: dict[str, Any], run_id: UUID, *, since: int, limit: int
) -> list[RunEvent]:
    """The run's events after seq `since`, oldest first; RunNotFound if the caller cannot see it."""
    require_visible(db, claims, run_id)
    with db.user_transaction(claims) as conn:
        rows = conn.execute(
            "select run_id, seq, event, data, created_at as ts from run_events "
            "where run_id = %s and seq > %s order by seq limit %s",
            (run_id, since, limit),
        ).fetchall()
    return [RunEvent.model_validate(row) for row in rows]


@dataclass(frozen=True)
class RunPage:
    """One page of runs, newest first, and the cursor for the next page (None at the end)."""

    runs: list[RunSummary]
    next_cursor: str | None


USER_RUNS = Listing(
    table="workflow_runs",
    columns="id, kind, workflow_id, status, progress, current_step, session_id, "
    "error_code, created_at, started_at, finished_at",
    time_column="created_at",
    id_type="uuid",
    where="user_id = %(user)s"
    " and (%(status)s::text is null or status = %(status)s)"
    " and (%(workflow)s::text is null or workflow_id = %(workflow)s)",
)


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
    summaries, next_cursor = user_page(
        db,
        claims,
        USER_RUNS,
        RunSummary.model_validate,
        params={"user": user_id, "status": status, "workflow": workflow_id},
        limit=limit,
        cursor=cursor,
    )
    return RunPage(summaries, next_cursor)


def stored_output(
    db: Database, claims: dict[str, Any], run_id: UUID, step: str | None
) -> tuple[Any, str | None]:
    """(output, url) of a run (step None) or of one of its steps, as the caller may see them."""
    with db.user_transaction(claims) as conn:
        if step is None:
            row = conn.execute(
                "select output, output_url from workflow_runs where id = %s", (run_id,)
            ).fetchone()
        else:
            row = conn.execute(
                "select output, output_url from workflow_steps where run_id = %s and name = %s",
                (run_id, step),
            ).fetchone()
    if row is None:
        what = f"run {run_id}" if step is None else f"step {step!r} of run {run_id}"
        raise RunNotFound(f"{what} does not exist")
    return row["output"], row["output_url"]
