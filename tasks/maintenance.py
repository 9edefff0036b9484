"""Periodic upkeep. Fired by the scheduler with `job` and `period`, each runs once per period
(worker.base.PeriodicTask); the bodies are conveyor.ops.maintenance's."""

from __future__ import annotations

from datetime import UTC, datetime

from celery import shared_task

from conveyor.constants import (
    TASK_DAILY_MAINTENANCE,
    TASK_DISPATCH_RUNS,
    TASK_EXECUTE_RUN,
    TASK_MONTHLY_QUOTA_RESET,
    TASK_REQUEUE_STALE_RUNS,
    TASK_USAGE_ROLLUP,
)
from conveyor.ledger import reservations
from conveyor.ops import maintenance, user_schedules
from conveyor.runs import credit_waits, waits
from conveyor.runs.dispatch import dispatch_runs as dispatch_held_runs
from conveyor.runs.reaper import finalize_abandoned_cancellations, runs_to_republish
from conveyor.runs.resume import Resumed
from conveyor.runs.run_rows import queued_by
from tasks.outbound import queue_deliveries
from worker.base import PeriodicTask
from worker.celery_app import send_or_log


@shared_task(bind=True, base=PeriodicTask, name=TASK_REQUEUE_STALE_RUNS)
def requeue_stale_runs(
    self: PeriodicTask, older_than_seconds: int | None = None, period: str | None = None
) -> int:
    """Publish again the runs that look lost (queued too long, or an expired lease), give back
    the credit holds of runs that ended, wait or were claimed again since, and resume runs
    waiting for credits their users now have."""
    res = self.resources
    reservations.release_stale(res.db)
    publish_resumed(self, credit_waits.resume_covered(res.db))
    threshold = (
        res.settings.requeue_after_seconds if older_than_seconds is None else older_than_seconds
    )
    cancelled = finalize_abandoned_cancellations(res.db)
    res.publisher.publish(*cancelled)
    run_ids = [*queued_by(cancelled), *runs_to_republish(res.db, older_than_seconds=threshold)]
    for run_id in run_ids:
        self.app.send_task(TASK_EXECUTE_RUN, args=[str(run_id)])
    return len(run_ids)


@shared_task(bind=True, base=PeriodicTask, name=TASK_DISPATCH_RUNS)
def dispatch_runs(self: PeriodicTask, period: str | None = None) -> int:
    """Publish the held runs that have a free slot (conveyor_dispatch_runs)."""
    res = self.resources
    run_ids = dispatch_held_runs(res.db, res.settings.dispatch_window)
    for run_id in run_ids:
        send_or_log(self.app, TASK_EXECUTE_RUN, str(run_id))
    return len(run_ids)


@shared_task(bind=True, base=PeriodicTask, name=TASK_DAILY_MAINTENANCE)
def daily_maintenance(self: PeriodicTask, period: str | None = None) -> dict[str, int]:
    """Retention purges, usage roll-up, orphaned artifacts (period: the local date)."""
    res = self.resources
    return maintenance.daily_maintenance(res.db, res.settings, period or "")


@shared_task(bind=True, base=PeriodicTask, name=TASK_MONTHLY_QUOTA_RESET)
def monthly_quota_reset(self: PeriodicTask, period: str) -> dict[str, int]:
    """Open every account's usage period for the month (`2026-11`), grant monthly credits."""
    res = self.resources
    return maintenance.monthly_quota_reset(
        res.db, res.settings, period, on_resumed=lambda resumed: publish_resumed(self, resumed)
    )


def publish_resumed(task: PeriodicTask, resumed: list[Resumed]) -> None:
    """Send the runs that credits resumed to the workers (a refused publish leaves a stale queued
    run for the requeue job)."""
    for run_id in credit_waits.publish_resumed(task.resources.publisher, resumed):
        send_or_log(task.app, TASK_EXECUTE_RUN, str(run_id))


@shared_task(bind=True, base=PeriodicTask, name=TASK_USAGE_ROLLUP)
def usage_rollup(self: PeriodicTask, period: str | None = None) -> dict[str, int]:
    """usage_daily for today and yesterday."""
    res = self.resources
    return maintenance.usage_rollup(res.db, res.settings, "")


@shared_task(bind=True, base=PeriodicTask, name=waits.TASK_WAKE_WAITING_RUNS)
def wake_waiting_runs(
    self: PeriodicTask, period: str | None = None, now: str | None = None
) -> dict[str, int]:
    """Resume the runs whose sleep or wait timeout ended (by `now`, ISO, default the database's
    clock), then publish them: a refused publish leaves a stale queued run for the requeue job."""
    res = self.resources
    woken = waits.wake_due_runs(res.db, now=datetime.fromisoformat(now) if now else None)
    for run in woken:
        res.publisher.publish(*run.events)
        if run.queued:
            send_or_log(self.app, TASK_EXECUTE_RUN, str(run.run_id))
        for parent in queued_by(run.events, besides=run.run_id):
            send_or_log(self.app, TASK_EXECUTE_RUN, str(parent))
        if run.deliveries:
            queue_deliveries(self.app, run.deliveries)
    return {"resumed": sum(run.queued for run in woken), "failed": sum(not r.queued for r in woken)}


@shared_task(bind=True, base=PeriodicTask, name=user_schedules.TASK_FIRE_SCHEDULES)
def fire_schedules(
    self: PeriodicTask, period: str | None = None, now: str | None = None
) -> dict[str, int]:
    """Start a run for each API schedule due by `now` (ISO, default the real clock), then publish
    them: a refused publish leaves a stale queued run for the requeue job."""
    res = self.resources
    fired = user_schedules.fire_due(
        res.db,
        datetime.fromisoformat(now) if now else datetime.now(UTC),
        window=res.settings.dispatch_window,
    )
    for one in fired:
        res.publisher.publish(*one.cancelled)
        if one.event is not None:
            res.publisher.publish(one.event)
        for run_id in one.dispatched:
            send_or_log(self.app, TASK_EXECUTE_RUN, str(run_id))
    return {"started": sum(one.run_id is not None for one in fired),
            "refused": sum(one.error_code is not None for one in fired)}  # fmt: skip
