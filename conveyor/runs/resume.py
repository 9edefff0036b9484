"""Taking a run out of `waiting`, shared by every resumer (the beat's timer in waits.py, signals):
the one conditional UPDATE that queues it and the wait step's checkpoint. docs/architecture.md,
"Durable waits"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from psycopg import sql
from psycopg.types.json import Jsonb

from conveyor.db import Connection
from conveyor.events.run_events import STATUS_UPDATE, RunEvent, append_events
from conveyor.ledger.usage import StepOwner
from conveyor.runs.run_rows import status_data
from conveyor.runs.step_rows import CompletedStep, mark_completed

STEP_WAITING = "step_waiting"
STEP_RESUMED = "step_resumed"

# How a run leaves `waiting` for `queued` (by its timer here, by a signal in signals.py). The one
# conditional UPDATE that takes a run out of `waiting` when its timer ended: only while
# it still waits at that step and is due, so a second beat process, a retried job or a signal
# racing the timer finds nothing to do. The time waited is added up (the run timeout ignores it)
# and progress counts the wait step as done.
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
    events += mark_completed(conn, owner, CompletedStep(position, output, None, None))
    events.append((STATUS_UPDATE, status_data(run)))
    appended = append_events(conn, run["id"], events)
    return Resumed(run["id"], run["user_id"], run["status"], step["name"], appended)
