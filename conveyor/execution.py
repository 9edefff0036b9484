"""Execute one run: claim it, run its agent, record the outcome. Celery-free, so tests call it."""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

import structlog

from conveyor import agents, runs
from conveyor.db import Database
from conveyor.errors import ConveyorError
from conveyor.events import EventPublisher

log = structlog.get_logger(__name__)


class Outcome(StrEnum):
    """What one execution attempt did."""

    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"  # not claimable: already running elsewhere, finished, or unknown
    LEASE_LOST = "lease_lost"


def execute_run(
    db: Database, publisher: EventPublisher, run_id: UUID, *, lease_seconds: int
) -> Outcome:
    """Run run_id once; a duplicate delivery of the same run is a no-op (SKIPPED)."""
    claimed = runs.claim_run(db, run_id, lease_seconds=lease_seconds)
    if claimed is None:
        log.info("run_not_claimable", run_id=str(run_id))
        return Outcome.SKIPPED
    claim, started = claimed
    publisher.publish(started)
    structlog.contextvars.bind_contextvars(run_id=str(run_id), attempt=claim.attempt)

    error: str | None = None
    error_code: str | None = None
    output = None
    try:
        agent = agents.get_agent(claim.workflow_id)
        output = agent.run(agent.validate_input(claim.input))
    except ConveyorError as exc:
        error, error_code = exc.message, exc.code
    except Exception as exc:
        # The agent's own failure belongs to the run; infrastructure errors happen outside this try.
        log.exception("agent_failed", agent=claim.workflow_id)
        error, error_code = f"{type(exc).__name__}: {exc}", "AGENT_FAILED"

    finished = runs.finish_run(db, claim, output=output, error=error, error_code=error_code)
    if finished is None:
        log.warning("run_lease_lost")
        return Outcome.LEASE_LOST
    publisher.publish(finished)
    return Outcome.FAILED if error is not None else Outcome.COMPLETED
