"""Agent and workflow runs."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from celery import shared_task

from conveyor.constants import TASK_EXECUTE_LANE, TASK_EXECUTE_RUN
from conveyor.runs.execution import Result, execute_run
from conveyor.runs.fanout import Lane
from conveyor.runs.lanes import LaneResult, execute_lane
from tasks.outbound import queue_deliveries
from worker.base import ConveyorTask
from worker.celery_app import send_or_log

# Runs and lanes are acknowledged when they start, not when they end. Their message only says
# "look at this run": the row is the truth, its lease fences a second worker out, and the
# reaper republishes a run whose lease expired or that sat queued too long. Holding the message
# for the whole run would buy nothing and break long runs: RabbitMQ closes a channel that keeps
# a delivery unacknowledged past its consumer_timeout (30 min by default), and Redis hands such
# a message to another worker after its visibility timeout.
RUN_ACKS_LATE = False


@shared_task(bind=True, base=ConveyorTask, name=TASK_EXECUTE_RUN, acks_late=RUN_ACKS_LATE)
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
        start_lanes=lambda lanes: start_lanes(self, lanes),
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


def start_lanes(task: ConveyorTask, lanes: Sequence[Lane]) -> None:
    """Publish the lanes of a run's branches or map; a refused publish leaves the run's lease to
    expire, and the reaper's coordinator dispatches them again."""
    for lane in lanes:
        send_or_log(task.app, TASK_EXECUTE_LANE, str(lane.run_id), lane.attempt, lane.position)


@shared_task(bind=True, base=ConveyorTask, name=TASK_EXECUTE_LANE, acks_late=RUN_ACKS_LATE)
def execute_lane_task(self: ConveyorTask, run_id: str, attempt: int, position: int) -> str:
    """Run one lane of a run's branches or map items; a stale or duplicate lane is a no-op."""
    res = self.resources
    result = execute_lane(
        res.db,
        res.publisher,
        res.settings,
        UUID(run_id),
        attempt,
        position,
        store=res.store,
        wake_runs=lambda ids: publish_runs(self, ids),
    )
    if result is LaneResult.HANDED_BACK:
        send_or_log(self.app, TASK_EXECUTE_LANE, run_id, attempt, position)
    return result.value
