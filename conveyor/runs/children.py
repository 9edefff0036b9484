"""Child runs: a `workflow` step's run linked to its parent (parent_run_id, parent_step).

Everything here runs in the caller's transaction. A child's end resumes its awaiting parent with
one conditional UPDATE (resume.RESUME_SET), as a signal does: this is a run "resumed by
Conveyor's own events". Cancelling a parent cancels its awaited children, down to grandchildren.
docs/architecture.md, "Child runs"."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from uuid import UUID

from psycopg import sql

from conveyor import outbound
from conveyor.db import Connection
from conveyor.errors import BadRequest
from conveyor.events.run_events import STATUS_UPDATE, RunEvent, append_event
from conveyor.runs.item_children import item_child_ended
from conveyor.runs.resume import FAIL_SET, RESUME_SET, Resumed, complete_wait, record_failed
from conveyor.runs.run_rows import close_unfinished_steps, status_data

CHILD_FAILED = "CHILD_FAILED"
CHILD_CANCELLED = "CHILD_CANCELLED"


class ChildNotStarted(BadRequest):
    """The `workflow` step's child could not be started (unknown workflow, invalid inputs)."""

    code = "CHILD_WORKFLOW_INVALID"


def idempotency_key(parent_id: UUID, position: int) -> str:
    """One child per parent step: a suspension tried again finds the child it already made."""
    return f"conveyor:child:{parent_id}:{position}"


# The parent still waits at the step that started this child: only then does the child's end
# resume (or fail) it, so a parent cancelled meanwhile, or resumed already, is left alone.
_STILL_WAITING = sql.SQL(
    """ where r.id = %(parent)s and r.status = 'waiting'
   and exists (select 1 from workflow_steps s
                where s.run_id = r.id and s.position = %(position)s and s.status = 'waiting'
                  and s.wait ->> 'kind' = 'child' and s.wait ->> 'child_run_id' = %(child)s)
"""
)
RESUME_PARENT_SQL = (
    RESUME_SET + _STILL_WAITING + sql.SQL("returning r.*, %(position)s::integer as wait_position")
)
FAIL_PARENT_SQL = FAIL_SET + _STILL_WAITING + sql.SQL("returning r.*")


def child_ended(conn: Connection, child: dict[str, Any]) -> list[Resumed]:
    """In the transaction that ended run `child` (any way a run ends): resume the parent waiting
    for it with its output, or fail the parent's step if it failed or was cancelled; a parent
    failed so ends its own awaiting parent too. Empty for runs nobody awaits."""
    if child.get("parent_run_id") is None or not child.get("parent_awaits"):
        return []
    if child.get("parent_item") is not None:
        return item_child_ended(conn, child)  # a map's item, not the step itself
    params = {
        "parent": child["parent_run_id"],
        "position": child["parent_step"],
        "child": str(child["id"]),
    }
    if child["status"] == "completed":
        parent = conn.execute(RESUME_PARENT_SQL, params).fetchone()
        if parent is None:
            return []
        return [
            complete_wait(
                conn, parent, child["output"], resumed_by="child", output_url=child["output_url"]
            )
        ]
    code = CHILD_CANCELLED if child["status"] == "cancelled" else CHILD_FAILED
    error = f"child run {child['id']} ({child['workflow_id']}) ended {child['status']}"
    if child.get("error"):
        error += f": {child['error']}"
    parent = conn.execute(FAIL_PARENT_SQL, {**params, "error": error, "code": code}).fetchone()
    if parent is None:
        return []
    failed = record_failed(conn, parent, child["parent_step"], error=error, code=code)
    return [failed, *child_ended(conn, parent)]


def with_parents(conn: Connection, run: dict[str, Any], ended: Resumed) -> Resumed:
    """ended (a run that just ended in a resumer's transaction) with its parents' events and
    webhook deliveries added: the caller publishes all of them after commit."""
    parents = child_ended(conn, run)
    if not parents:
        return ended
    events = [event for parent in parents for event in parent.events] + ended.events
    deliveries = [d for parent in parents for d in parent.deliveries] + ended.deliveries
    return replace(ended, events=events, deliveries=deliveries)


# The awaited descendants of a run still unfinished, deepest first, locked before the run
# itself is: a child ending locks itself, then its parent, so taking them in the same order
# (child before parent) keeps a cancel and a child's end from deadlocking.
LOCK_DESCENDANTS_SQL = """
with recursive tree (id, depth) as (
  select id, 1 from workflow_runs where parent_run_id = %s and parent_awaits
  union all
  select c.id, t.depth + 1 from workflow_runs c join tree t on c.parent_run_id = t.id
   where c.parent_awaits
)
select r.id from workflow_runs r join tree t on t.id = r.id
 where r.status in ('queued', 'running', 'waiting')
 order by t.depth desc, r.id
   for no key update of r
"""
CANCEL_SQL = """
update workflow_runs
   set status = case when status in ('queued', 'waiting') then 'cancelled' else status end,
       finished_at = case when status in ('queued', 'waiting') then now() else finished_at end,
       cancel_requested_at = coalesce(cancel_requested_at, now()),
       wake_at = null, waiting_since = null, updated_at = now()
 where id = any(%s) and status in ('queued', 'running', 'waiting')
returning *
"""


def lock_descendants(conn: Connection, run_id: UUID) -> list[UUID]:
    """Lock run_id's unfinished awaited descendants (before run_id's own row); their ids."""
    return [row["id"] for row in conn.execute(LOCK_DESCENDANTS_SQL, (run_id,)).fetchall()]


def cancel_descendants(conn: Connection, run_id: UUID) -> list[RunEvent]:
    """Cancel run_id's awaited descendants: queued or waiting ones at once (steps closed, their
    run.cancelled webhook queued, as store.record_cancelled does), running ones asked to stop
    (their worker records it). Detached children, and what they started, go on."""
    ids = lock_descendants(conn, run_id)
    if not ids:
        return []
    events: list[RunEvent] = []
    for row in conn.execute(CANCEL_SQL, (ids,)).fetchall():
        if row["status"] == "cancelled":
            close_unfinished_steps(conn, row["id"], run_status="cancelled")
            outbound.record_run_finished(conn, row, queued=False)
        events.append(append_event(conn, row["id"], STATUS_UPDATE, status_data(row)))
    return events


def children_of(conn: Connection, run_id: UUID) -> list[dict[str, Any]]:
    """run_id's children, oldest first, with their usage totals (usage_events by run)."""
    return conn.execute(
        """
        select r.id, r.workflow_id, r.status, r.parent_step, r.parent_awaits as awaited,
               r.created_at, r.finished_at,
               coalesce(u.calls, 0)::integer as calls,
               coalesce(u.tokens, 0)::bigint as total_tokens,
               coalesce(u.cost, 0)::bigint as cost_micro_usd,
               coalesce(u.credits, 0)::bigint as credits_charged
          from workflow_runs r
          left join lateral (
            select count(*) as calls, sum(prompt_tokens + completion_tokens) as tokens,
                   sum(input_cost_micro_usd + output_cost_micro_usd) as cost,
                   sum(credits_charged) as credits
              from usage_events where run_id = r.id
          ) u on true
         where r.parent_run_id = %s
         order by r.created_at, r.id
        """,
        (run_id,),
    ).fetchall()
