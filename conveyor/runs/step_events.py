"""Events a step appends while it runs (streamed tokens, ...): stored in run_events like every
other event, so a client that reconnects with `since` misses none, and fenced by the run's
attempt, so a worker that lost its run appends nothing."""

from __future__ import annotations

from typing import Any

from conveyor.db import Database
from conveyor.events.run_events import EventPublisher, append_events
from conveyor.runs.store import ClaimedRun
from conveyor.runs.supervision import LeaseLost


def emit_step_event(
    db: Database, publisher: EventPublisher, claim: ClaimedRun, event: str, data: dict[str, Any]
) -> None:
    """Append one event to the claimed run and publish it; LeaseLost when the run is no longer
    this worker's (the step stops: its work would be refused anyway)."""
    with db.transaction() as conn:
        held = conn.execute(
            "select 1 from workflow_runs where id = %s and attempt = %s and status = 'running' "
            "for no key update",
            (claim.id, claim.attempt),
        ).fetchone()
        if held is None:
            raise LeaseLost()
        events = append_events(conn, claim.id, [(event, data)])
    publisher.publish(*events)
