"""Taking a run out of `waiting`, shared by every resumer (the beat's timer, signals, approvals,
a child run's end): the one conditional UPDATE that queues it, the step's checkpoint, and ending
a waiting run failed. docs/architecture.md, "Durable waits"."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import sql
from psycopg.types.json import Jsonb

from conveyor import outbound
from conveyor.db import Connection
from conveyor.events import notifications
from conveyor.events.run_events import STATUS_UPDATE, RunEvent, append_events
from conveyor.ledger.usage import StepOwner
from conveyor.runs.run_rows import STEP_FAILED, close_unfinished_steps, status_data
from conveyor.runs.step_rows import CompletedStep, mark_completed

STEP_WAITING = "step_waiting"
STEP_RESUMED = "step_resumed"


def step_waiting(
    name: str, position: int, wake_at: datetime | None, wait: dict[str, Any]
) -> dict[str, Any]:
    """A `step_waiting` event's data: the step, its position, when its timer ends, its wait."""
    return {
        "step": name,
        "position": position,
        "wake_at": wake_at.isoformat() if wake_at else None,
        **wait,
    }


# How a run leaves `waiting` for `queued` (by its timer in waits.py, a signal, an approval, a
# child's end). Each resumer adds the conditions under which it may: only while the run still
# waits at that step, so a second resumer racing it blocks on the row lock, then finds nothing
# to do. The time waited is added up (the run timeout ignores it) and progress counts the wait
# step as done.
RESUME_SET = sql.SQL("""
update workflow_runs r
   set status = 'queued', enqueued_at = now(), wake_at = null, waiting_since = null,
       updated_at = now(),
       waited_seconds = r.waited_seconds
         + greatest(0, extract(epoch from now() - coalesce(r.waiting_since, now()))),
       progress = (select least(1, (count(*) filter (where s.status = 'completed') + 1)::real
                                   / count(*))
                     from workflow_steps s where s.run_id = r.id)
""")
# The same, ending the run `failed` (a `fail` timeout, a rejection with on_reject: fail, a
# failed child): each caller adds its conditions and `returning r.*`.
FAIL_SET = sql.SQL("""
update workflow_runs r
   set status = 'failed', error = %(error)s, error_code = %(code)s, current_step = null,
       finished_at = now(), wake_at = null, waiting_since = null, updated_at = now(),
       waited_seconds = r.waited_seconds
         + greatest(0, extract(epoch from now() - coalesce(r.waiting_since, now())))
""")


@dataclass(frozen=True)
class Resumed:
    """A run taken out of `waiting`: its events to publish and, when queued, a run to send
    (`runs.execute`) after commit; deliveries are outbound webhooks of a run that ended."""

    run_id: UUID
    user_id: UUID
    status: str
    step: str
    events: list[RunEvent]
    deliveries: list[UUID] = field(default_factory=list)

    @property
    def queued(self) -> bool:
        """The run goes on: publish it."""
        return self.status == "queued"


def complete_wait(
    conn: Connection,
    run: dict[str, Any],
    output: Any,
    *,
    resumed_by: str,
    signal: str | None = None,
    output_url: str | None = None,
) -> Resumed:
    """In the transaction that took the run out of `waiting`: checkpoint the wait step as
    completed with output (as any step) and append the events."""
    position = run["wait_position"]
    step = conn.execute(
        "update workflow_steps set wait = coalesce(wait, '{}'::jsonb) || %s "
        "where run_id = %s and position = %s returning name",
        (Jsonb({"resumed_by": resumed_by}), run["id"], position),
    ).fetchone()
    assert step is not None
    owner = StepOwner(run["id"], run["user_id"], run["session_id"], run["workflow_id"])
    resumed = {"step": step["name"], "position": position, "resumed_by": resumed_by}
    if signal is not None:
        resumed["signal"] = signal
    events: list[tuple[str, dict[str, Any]]] = [(STEP_RESUMED, resumed)]
    events += mark_completed(conn, owner, CompletedStep(position, output, output_url, None))
    events.append((STATUS_UPDATE, status_data(run)))
    appended = append_events(conn, run["id"], events)
    return Resumed(run["id"], run["user_id"], run["status"], step["name"], appended)


def record_failed(
    conn: Connection,
    run: dict[str, Any],
    position: int,
    *,
    error: str,
    code: str,
    resumed_by: str | None = None,
) -> Resumed:
    """In the transaction that ended a waiting run `failed` (FAIL_SET): the waiting step fails,
    the rest are skipped; notification, run.failed webhook and events, as a worker's end."""
    if resumed_by is not None:
        conn.execute(
            "update workflow_steps set wait = coalesce(wait, '{}'::jsonb) || %s "
            "where run_id = %s and position = %s",
            (Jsonb({"resumed_by": resumed_by}), run["id"], position),
        )
    events: list[tuple[str, dict[str, Any]]] = []
    step = ""
    for closed in close_unfinished_steps(
        conn,
        run["id"],
        run_status="failed",
        failed_position=position,
        error=error,
        error_code=code,
    ):
        if closed["status"] == "failed":
            events.append((STEP_FAILED, closed))
            step = closed["step"]
    events.append((STATUS_UPDATE, status_data(run)))
    notifications.notify_run_finished(conn, run)
    deliveries = outbound.record_run_finished(conn, run)
    appended = append_events(conn, run["id"], events)
    return Resumed(run["id"], run["user_id"], run["status"], step, appended, deliveries)
