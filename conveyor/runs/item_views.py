"""A run's branches and map items as its owner (or an admin) may see them, under RLS:
`GET /api/runs/<id>/items`, a page at a time in step and item order."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from conveyor.db import Database
from conveyor.errors import InvalidInput
from conveyor.payload import Payload
from conveyor.runs.views import require_visible

ItemStatus = Literal["pending", "running", "waiting", "completed", "failed", "cancelled"]


class ItemsQuery(Payload):
    """`?step=&status=&after=&limit=`: one step's items (default: every step's), in step and
    item order, from just past `after` (a page's `next_after`, `<position>.<index>`)."""

    step: str | None = Field(default=None, max_length=64)
    status: ItemStatus | None = None
    after: str | None = Field(default=None, pattern=r"^\d{1,5}\.\d{1,4}$")
    limit: int = Field(default=100, ge=1, le=500)

    def cursor(self) -> tuple[int, int]:
        """(position, index) the page starts after; (-1, -1) from the start."""
        if self.after is None:
            return -1, -1
        position, index = self.after.split(".")
        return int(position), int(index)


class ItemView(BaseModel):
    """One branch (item 0 of its step) or map item: its state, output or error, usage, and the
    child run it waits for (a map of child workflows)."""

    step: str
    position: int
    index: int
    status: ItemStatus
    attempt: int
    input: Any = None
    output: Any = None
    output_url: str | None = None
    error: str | None = None
    error_code: str | None = None
    usage: dict[str, Any] | None = None
    child_run_id: UUID | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ItemCounts(BaseModel):
    """How many of the step's items are in each state."""

    step: str
    kind: str
    total: int
    pending: int
    running: int
    waiting: int
    completed: int
    failed: int
    cancelled: int


class ItemsPage(BaseModel):
    """A page of items, the counts per step, and where the next page starts (null: the end)."""

    items: list[ItemView]
    steps: list[ItemCounts]
    next_after: str | None


def list_items(db: Database, claims: dict[str, Any], run_id: UUID, query: ItemsQuery) -> ItemsPage:
    """The page of items the query asks for; RunNotFound for a run the caller may not see."""
    require_visible(db, claims, run_id)
    with db.user_transaction(claims) as conn:
        counts = conn.execute(
            """
            select s.name as step, s.kind, count(*) as total,
                   count(*) filter (where w.status = 'pending') as pending,
                   count(*) filter (where w.status = 'running') as running,
                   count(*) filter (where w.status = 'waiting') as waiting,
                   count(*) filter (where w.status = 'completed') as completed,
                   count(*) filter (where w.status = 'failed') as failed,
                   count(*) filter (where w.status = 'cancelled') as cancelled
              from run_work_items w
              join workflow_steps s on s.run_id = w.run_id and s.position = w.position
             where w.run_id = %s
             group by s.position, s.name, s.kind order by s.position
            """,
            (run_id,),
        ).fetchall()
        if query.step is not None and query.step not in {row["step"] for row in counts}:
            raise InvalidInput(
                f"run {run_id} has no branch or map step {query.step!r}; "
                f"its steps with items: {[row['step'] for row in counts]}"
            )
        rows = conn.execute(
            """
            select s.name as step, w.position, w.item as index, w.status, w.attempt, w.input,
                   w.output, w.output_url, w.error, w.error_code, w.usage, w.child_run_id,
                   w.started_at, w.finished_at
              from run_work_items w
              join workflow_steps s on s.run_id = w.run_id and s.position = w.position
             where w.run_id = %(run)s and (w.position, w.item) > (%(position)s, %(item)s)
               and (%(step)s::text is null or s.name = %(step)s)
               and (%(status)s::text is null or w.status = %(status)s)
             order by w.position, w.item
             limit %(limit)s
            """,
            {
                "run": run_id,
                "position": query.cursor()[0],
                "item": query.cursor()[1],
                "step": query.step,
                "status": query.status,
                "limit": query.limit + 1,
            },
        ).fetchall()
    more = len(rows) > query.limit
    page = [ItemView(**row) for row in rows[: query.limit]]
    return ItemsPage(
        items=page,
        steps=[ItemCounts(**row) for row in counts],
        next_after=f"{page[-1].position}.{page[-1].index}" if more else None,
    )
