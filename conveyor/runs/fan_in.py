"""The fan-in, shared by a lane's item end (work_items.py) and a child item's end
(item_children.py), always under the run row's lock: whether items are still open, the map's
progress, and what the run does when none is: it waits while child runs of its items go on,
else it goes back to the queue for its coordinator."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from conveyor.db import Connection
from conveyor.events.run_events import STATUS_UPDATE
from conveyor.runs.run_rows import status_data

MAP_PROGRESS = "map_progress"

# A run whose only unfinished items wait for their child runs holds no worker and no lease.
PARK_SQL = """
update workflow_runs set status = 'waiting', lease_expires_at = null, waiting_since = now(),
       updated_at = now()
 where id = %s returning *
"""
# Back to the queue: from `running` (a lane ended the last item) or `waiting` (a child did).
QUEUE_SQL = """
update workflow_runs r
   set status = 'queued', lease_expires_at = null, enqueued_at = now(), updated_at = now(),
       waiting_since = null,
       waited_seconds = r.waited_seconds
         + greatest(0, extract(epoch from now() - coalesce(r.waiting_since, now())))
 where id = %s returning *
"""


def drop_unstarted(conn: Connection, run_id: UUID) -> None:
    """A failure failing fast, or a cancel: the items nobody took will not run, and the items
    waiting for a child run wait no more (the child's later end finds its item closed)."""
    conn.execute(
        "update run_work_items set status = 'cancelled', finished_at = now() "
        "where run_id = %s and status in ('pending', 'waiting')",
        (run_id,),
    )


def items_in(conn: Connection, run_id: UUID, statuses: tuple[str, ...]) -> bool:
    """Whether any of the run's items has one of statuses (the partial index answers for
    pending and running at any size)."""
    row = conn.execute(
        "select exists (select 1 from run_work_items where run_id = %s "
        "and status = any(%s)) as found",
        (run_id, list(statuses)),
    ).fetchone()
    assert row is not None
    return bool(row["found"])


def progress(conn: Connection, run_id: UUID, position: int) -> dict[str, Any]:
    """A map's `map_progress` event: its items completed, failed and in all."""
    counts = conn.execute(
        """
        select count(*) filter (where status = 'completed') as completed,
               count(*) filter (where status = 'failed') as failed, count(*) as total
          from run_work_items where run_id = %s and position = %s
        """,
        (run_id, position),
    ).fetchone()
    assert counts is not None
    return {"position": position, **counts}


def none_open(
    conn: Connection, run_id: UUID, position: int, *, is_map: bool, running: bool
) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """No item of the run is pending or running: park a running run while child items wait,
    else queue it for its coordinator. The events to append, and whether it was queued."""
    if items_in(conn, run_id, ("waiting",)):
        if not running:
            return [], False  # parked already: the last child's end queues it
        parked = conn.execute(PARK_SQL, (run_id,)).fetchone()
        assert parked is not None
        return [(STATUS_UPDATE, status_data(parked))], False
    queued = conn.execute(QUEUE_SQL, (run_id,)).fetchone()
    assert queued is not None
    if is_map:
        # The coordinator's claim counts an attempt of the map it resumes at; assembling the
        # map's output is no new attempt of it.
        conn.execute(
            "update workflow_steps set attempt = attempt - 1 "
            "where run_id = %s and position = %s and attempt > 0",
            (run_id, position),
        )
    return [(STATUS_UPDATE, status_data(queued))], True
