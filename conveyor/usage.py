"""The usage hook: every model call a step makes is reported here, inside the step's checkpoint
transaction, so usage is recorded exactly when the step's output is."""

from __future__ import annotations

from uuid import UUID

from psycopg.types.json import Jsonb

from conveyor.db import Connection
from conveyor.steps import LlmUsage


def record_step_usage(conn: Connection, *, run_id: UUID, position: int, usage: LlmUsage) -> None:
    """Store the call's tokens, cost and latency on its step.

    The usage ledger (quotas, credits) will charge here too, keyed by run, step and attempt."""
    conn.execute(
        "update public.workflow_steps set usage = %s where run_id = %s and position = %s",
        (Jsonb(usage.as_dict()), run_id, position),
    )
