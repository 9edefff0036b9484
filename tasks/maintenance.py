"""Periodic upkeep."""

from __future__ import annotations

from celery import shared_task

from conveyor.constants import TASK_EXECUTE_RUN, TASK_REQUEUE_STALE_RUNS
from conveyor.runs import finalize_abandoned_cancellations, runs_to_republish
from worker.base import ConveyorTask


@shared_task(bind=True, base=ConveyorTask, name=TASK_REQUEUE_STALE_RUNS)
def requeue_stale_runs(self: ConveyorTask, older_than_seconds: int | None = None) -> int:
    """Publish again the runs that look lost (queued too long, or an expired lease)."""
    res = self.resources
    threshold = (
        res.settings.requeue_after_seconds if older_than_seconds is None else older_than_seconds
    )
    res.publisher.publish(*finalize_abandoned_cancellations(res.db))
    run_ids = runs_to_republish(res.db, older_than_seconds=threshold)
    for run_id in run_ids:
        self.app.send_task(TASK_EXECUTE_RUN, args=[str(run_id)])
    return len(run_ids)
