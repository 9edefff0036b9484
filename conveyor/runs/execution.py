"""Execute one run: claim it, run its steps, record how it ended. Celery-free, so tests call it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from uuid import UUID

import structlog

from conveyor import metrics, runs, workflows
from conveyor.db import Database
from conveyor.errors import ConveyorError, ServiceUnavailable
from conveyor.events.run_events import EventPublisher
from conveyor.runs import artifacts, checkpoints
from conveyor.runs.engine import Engine
from conveyor.runs.fanout import Lane, RunFannedOut
from conveyor.runs.store import Outcome
from conveyor.runs.supabase_storage import StorageUnavailable
from conveyor.runs.supervision import HandedBack, LeaseLost, RunCancelled, RunSuspended
from conveyor.settings import Settings

log = structlog.get_logger(__name__)


class Result(StrEnum):
    """What one execution attempt did."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # not claimable: already running elsewhere, finished, or unknown
    LEASE_LOST = "lease_lost"
    HANDED_BACK = "handed_back"  # queued again: this worker is shutting down; publish it again
    # Queued again, but left to the reaper: the step would not stop, and republished at once
    # the run could start that step beside the thread still running it until this process exits.
    QUEUED_FOR_REAPER = "queued_for_reaper"
    WAITING = "waiting"  # a durable wait was committed: the run holds no worker until resumed
    FANNED_OUT = "fanned_out"  # its branches or map items were handed to lanes


def execute_run(
    db: Database,
    publisher: EventPublisher,
    settings: Settings,
    run_id: UUID,
    *,
    store: artifacts.ArtifactStore | None = None,
    wake_deliveries: Callable[[Sequence[UUID]], None] | None = None,
    wake_runs: Callable[[Sequence[UUID]], None] | None = None,
    start_lanes: Callable[[Sequence[Lane]], None] | None = None,
) -> Result:
    """Run run_id once; a duplicate delivery of the same run is a no-op (SKIPPED). The webhook
    deliveries its end created are handed to wake_deliveries after commit, the runs it made
    runnable (children it started, a parent its end resumed) to wake_runs, and the lanes of its
    branches or map items to start_lanes."""
    claimed = runs.claim_run(db, run_id, lease_seconds=settings.run_lease_seconds)
    if claimed is None:
        log.info("run_not_claimable", run_id=str(run_id))
        return Result.SKIPPED
    claim, started = claimed
    claimed_at = time.monotonic()
    publisher.publish(started)
    structlog.contextvars.bind_contextvars(
        run_id=str(run_id), attempt=claim.attempt, user_id=str(claim.user_id)
    )

    try:
        engine = Engine(
            db,
            publisher,
            settings,
            store or artifacts.store_for(settings),
            claim,
            workflows.get(claim.workflow_id),
        )
        outcome = engine.run()
    except StorageUnavailable:
        # Storage stayed down past the engine's wait, Postgres is up: queue the run again with its
        # step's attempt given back, and let the task retry with backoff.
        queued = checkpoints.hand_back(db, claim, uncount_attempt=True)
        if queued is not None:
            publisher.publish(queued)
            raise
        outcome = Outcome()  # a cancel came in meanwhile: finish_run records it
    except ServiceUnavailable:
        # Postgres unreachable: the run stays claimed; the task retries with backoff and the
        # reaper hands the run on once the lease expires.
        raise
    except ConveyorError as exc:  # unknown workflow, input no longer valid for its definition
        outcome = Outcome(error=exc.message, error_code=exc.code)
    except RunCancelled:
        outcome = Outcome()  # finish_run records `cancelled` because the request is on the row
    except LeaseLost:
        log.warning("run_lease_lost")
        return Result.LEASE_LOST
    except RunFannedOut as fanned:
        log.info("run_fanned_out", lanes=len(fanned.lanes))
        if start_lanes is not None:
            start_lanes(fanned.lanes)
        return Result.FANNED_OUT
    except RunSuspended as suspended:
        log.info("run_waiting")
        if suspended.enqueue and wake_runs is not None:
            wake_runs(suspended.enqueue)
        return Result.WAITING
    except HandedBack as exc:
        # A step that would not stop keeps its attempt counted: it may still be running.
        queued = checkpoints.hand_back(
            db, claim, uncount_attempt=exc.attempt_started and exc.step_stopped
        )
        if queued is not None:
            log.info("run_handed_back", step_stopped=exc.step_stopped)
            publisher.publish(queued)
            return Result.HANDED_BACK if exc.step_stopped else Result.QUEUED_FOR_REAPER
        outcome = Outcome()  # a cancel came in meanwhile: finish_run records it
    except Exception as exc:
        # A bug must end the run visibly, not leave it `running` to be re-executed forever.
        log.exception("engine_failed")
        outcome = Outcome(
            error=f"internal error: {type(exc).__name__}: {exc}", error_code="INTERNAL_ERROR"
        )

    deliveries: list[UUID] = []
    resumed: list[UUID] = []
    finished = runs.finish_run(
        db,
        claim,
        outcome,
        deliveries=deliveries,
        resumed=resumed,
        dispatch_window=settings.dispatch_window,
    )
    if finished is None:
        log.warning("run_lease_lost")
        return Result.LEASE_LOST
    status = finished[-1].data["status"]
    metrics.RUNS_FINISHED.labels(claim.workflow_id, status).inc()
    metrics.RUN_DURATION.labels(claim.workflow_id).observe(time.monotonic() - claimed_at)
    publisher.publish(*finished)
    if deliveries and wake_deliveries is not None:
        wake_deliveries(deliveries)
    if resumed and wake_runs is not None:
        wake_runs(resumed)
    return Result(status)
