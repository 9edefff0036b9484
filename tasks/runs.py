"""Agent and workflow runs."""

from __future__ import annotations

from uuid import UUID

from celery import shared_task

from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.execution import execute_run
from tasks.outbound import queue_deliveries
from worker.base import ConveyorTask


@shared_task(bind=True, base=ConveyorTask, name=TASK_EXECUTE_RUN)
def execute(self: ConveyorTask, run_id: str) -> str:
    """Execute a run; redelivered or duplicate messages for the same run are no-ops."""
    res = self.resources
    return execute_run(
        res.db,
        res.publisher,
        res.settings,
        UUID(run_id),
        store=res.store,
        wake_deliveries=lambda ids: queue_deliveries(self.app, ids),
    ).value
