"""Writing a completed step: its output and usage, and the event that says so."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from conveyor.db import Connection
from conveyor.ledger import usage
from conveyor.ledger.usage import StepOwner
from conveyor.steps import LlmUsage

STEP_COMPLETED = "step_completed"


@dataclass(frozen=True)
class CompletedStep:
    """A step that finished: where it is, what it produced, what its model calls consumed."""

    position: int
    output: Any
    output_url: str | None
    llm_usage: LlmUsage | None
    # What made it (runs/fingerprints.py): a rerun reuses it only while that is unchanged.
    spec_hash: str | None = None


def mark_completed(
    conn: Connection, owner: StepOwner, step: CompletedStep
) -> list[tuple[str, dict[str, Any]]]:
    """Record the step as completed and charge its usage (caller's transaction, fenced by the
    caller); returns the events to append."""
    run_id = owner.run_id
    row = conn.execute(
        """
        update workflow_steps
           set status = 'completed', output = %s, output_url = %s, finished_at = now(),
               error = null, error_code = null, spec_hash = coalesce(%s, spec_hash)
         where run_id = %s and position = %s
        returning name, attempt,
                  (extract(epoch from finished_at - started_at) * 1000)::bigint as duration_ms
        """,
        (Jsonb(step.output), step.output_url, step.spec_hash, run_id, step.position),
    ).fetchone()
    assert row is not None, "a claimed run has a row for every step"
    events: list[tuple[str, dict[str, Any]]] = [
        (
            STEP_COMPLETED,
            {
                "step": row["name"],
                "position": step.position,
                "attempt": row["attempt"],
                "duration_ms": row["duration_ms"],
                "usage": step.llm_usage.as_dict() if step.llm_usage is not None else None,
            },
        )
    ]
    if step.llm_usage is not None:
        events += usage.record_step_usage(
            conn, owner, position=step.position, attempt=row["attempt"], usage=step.llm_usage
        )
    return events
