"""Agent and workflow runs."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from celery import shared_task

from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.runs.execution import Result, execute_run
from tasks.outbound import queue_deliveries
from worker.base import ConveyorTask
from worker.celery_app import send_or_log


@shared_task(bind=True, base=ConveyorTask, name=TASK_EXECUTE_RUN)
def execute(self: ConveyorTask, run_id: str) -> str:
    """Execute a run; redelivered or duplicate messages for the same run are no-ops."""
    res = self.resources
    result = execute_run(
        res.db,
        res.publisher,
        res.settings,
        UUID(run_id),
        store=res.store,
        wake_deliveries=lambda ids: queue_deliveries(self.app, ids),
        wake_runs=lambda ids: publish_runs(self, ids),
    )
    if result is Result.HANDED_BACK:
        republish(self, run_id)
    return result.value


def republish(task: ConveyorTask, run_id: str) -> None:
    """Queue a handed-back run at once, so another worker resumes it now rather than when the
    reaper finds it (which it still will if Redis refuses this)."""
    send_or_log(task.app, TASK_EXECUTE_RUN, run_id)


def publish_runs(task: ConveyorTask, run_ids: Sequence[UUID]) -> None:
    """Queue runs made runnable after commit; a refused publish leaves them to the reaper."""
    for run_id in run_ids:
        send_or_log(task.app, TASK_EXECUTE_RUN, str(run_id))
