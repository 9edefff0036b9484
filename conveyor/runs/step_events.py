"""Events a step appends while it runs (streamed tokens, ...): stored in run_events like every
other event, so a client that reconnects with `since` misses none, and fenced by the run's
attempt, so a worker that lost its run appends nothing."""

from __future__ import annotations

from typing import Any

from conveyor.db import Connection, Database
from conveyor.events.run_events import EventPublisher, append_events
from conveyor.runs.run_rows import lock_held
from conveyor.runs.store import ClaimedRun
from conveyor.runs.supervision import LeaseLost
from conveyor.steps.llm_stream import STEP_TOKENS, STEP_TOKENS_DISCARDED


def emit_step_event(
    db: Database, publisher: EventPublisher, claim: ClaimedRun, event: str, data: dict[str, Any]
) -> None:
    """Append one event to the claimed run and publish it; LeaseLost when the run is no longer
    this worker's (the step stops: its work would be refused anyway)."""
    with db.transaction() as conn:
        if lock_held(conn, claim.id, claim.attempt) is None:
            raise LeaseLost()
        items: list[tuple[str, dict[str, Any]]] = []
        # Only a later attempt can have an earlier one's text to mark (and the check scans the
        # run's events: a first attempt, every map item's, skips it).
        if event == STEP_TOKENS and data.get("index") == 0 and int(data.get("attempt", 1)) > 1:
            items += unmarked_partial_tokens(conn, claim, data)
        events = append_events(conn, claim.id, [*items, (event, data)])
    publisher.publish(*events)


def unmarked_partial_tokens(
    conn: Connection, claim: ClaimedRun, data: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """`step_tokens_discarded` for earlier attempts of the step whose text was sent but never
    marked: a worker killed mid-stream (kill -9) could not say so itself. The run row lock held by
    the caller keeps two writers from marking the same attempt."""
    rows = conn.execute(
        """
        select (t.data ->> 'attempt')::int as attempt, sum(char_length(t.data ->> 'text')) as chars
          from run_events t
         where t.run_id = %(run)s and t.event = %(tokens)s and t.data ->> 'step' = %(step)s
           and (t.data ->> 'attempt')::int < %(attempt)s
           and not exists (
             select 1 from run_events d
              where d.run_id = %(run)s and d.event = %(discarded)s
                and d.data ->> 'step' = %(step)s and d.data -> 'attempt' = t.data -> 'attempt')
         group by 1
         order by 1
        """,
        {
            "run": claim.id,
            "tokens": STEP_TOKENS,
            "discarded": STEP_TOKENS_DISCARDED,
            "step": data["step"],
            "attempt": int(data["attempt"]),
        },
    ).fetchall()
    return [
        (
            STEP_TOKENS_DISCARDED,
            {"step": data["step"], "attempt": row["attempt"], "chars": int(row["chars"])},
        )
        for row in rows
    ]
