"""The periodic jobs as data: what runs when, on which queue. Read by the scheduler
(worker/scheduler.py), `beat_schedule.py`, `conveyor maintenance list` and
`GET /api/admin/maintenance`.

Times are in CONVEYOR_TIMEZONE (UTC by default). Each job's run claims its period in
`maintenance_runs`, so it happens once per period whatever fires it (conveyor/ops/schedule.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from conveyor.constants import (
    DISPATCH_EVERY_SECONDS,
    TASK_DAILY_MAINTENANCE,
    TASK_DISPATCH_RUNS,
    TASK_MONTHLY_QUOTA_RESET,
    TASK_RECONCILE_STRIPE_EVENTS,
    TASK_REQUEUE_STALE_RUNS,
    TASK_REQUEUE_STRIPE_EVENTS,
    TASK_REQUEUE_USAGE_BATCHES,
    TASK_REQUEUE_WEBHOOK_DELIVERIES,
    TASK_USAGE_ROLLUP,
)
from conveyor.db import Database
from conveyor.ops.analytics import PUSH_SECONDS, TASK_PUSH_ANALYTICS
from conveyor.ops.job_runs import MaintenanceRun, recent_runs
from conveyor.ops.maintenance import DAILY_MAINTENANCE, MONTHLY_QUOTA_RESET, USAGE_ROLLUP
from conveyor.ops.schedule import Daily, Every, Hourly, Job, Monthly
from conveyor.ops.user_schedules import FIRE_EVERY_SECONDS, TASK_FIRE_SCHEDULES
from conveyor.runs.waits import TASK_WAKE_WAITING_RUNS, WAKE_EVERY_SECONDS

JOBS: tuple[Job, ...] = (
    Job(
        name="requeue_stale_runs",
        task=TASK_REQUEUE_STALE_RUNS,
        queue="maintenance",
        cadence=Every(30),
        # A missed tick is worthless once the next one is due.
        expires_seconds=25,
        description="republish runs left queued or with an expired lease",
    ),
    Job(
        name="wake_waiting_runs",
        task=TASK_WAKE_WAITING_RUNS,
        queue="maintenance",
        # A sleep ends at most this late; the scan reads only waiting runs (a partial index).
        cadence=Every(WAKE_EVERY_SECONDS),
        expires_seconds=WAKE_EVERY_SECONDS - 3,
        description="resume waiting runs whose sleep or wait timeout has ended",
    ),
    Job(
        name="dispatch_runs",
        task=TASK_DISPATCH_RUNS,
        queue="maintenance",
        # The safety net: submits and run ends dispatch at once; this catches the rest
        # (a cancelled held run, a publish refused after commit, a debounce window ending).
        cadence=Every(DISPATCH_EVERY_SECONDS),
        expires_seconds=DISPATCH_EVERY_SECONDS - 1,
        description="publish held runs (concurrency keys, priority) that have a free slot",
    ),
    Job(
        name="fire_schedules",
        task=TASK_FIRE_SCHEDULES,
        queue="maintenance",
        # A schedule fires at most this late; the scan reads only active schedules that are due.
        cadence=Every(FIRE_EVERY_SECONDS),
        expires_seconds=FIRE_EVERY_SECONDS - 3,
        description="start a run for each API schedule whose period is due",
    ),
    Job(
        name="requeue_usage_batches",
        task=TASK_REQUEUE_USAGE_BATCHES,
        queue="maintenance",
        cadence=Every(30),
        expires_seconds=25,
        description="republish accepted usage batches no worker recorded in time",
    ),
    Job(
        name="requeue_webhook_deliveries",
        task=TASK_REQUEUE_WEBHOOK_DELIVERIES,
        queue="maintenance",
        cadence=Every(30),
        expires_seconds=25,
        description="queue outbound webhook deliveries that are due, lost or abandoned",
    ),
    Job(
        name="requeue_stripe_events",
        task=TASK_REQUEUE_STRIPE_EVENTS,
        queue="maintenance",
        cadence=Every(30),
        expires_seconds=25,
        description="queue stored Stripe events that are due (retries, lost messages)",
    ),
    Job(
        name="reconcile_stripe_events",
        task=TASK_RECONCILE_STRIPE_EVENTS,
        queue="maintenance",
        cadence=Every(600),
        expires_seconds=540,
        description="retry failed Stripe events, store events that never arrived",
    ),
    Job(
        name="push_analytics",
        task=TASK_PUSH_ANALYTICS,
        queue="maintenance",
        cadence=Every(PUSH_SECONDS),
        expires_seconds=PUSH_SECONDS - 5,
        description="analytics websockets recompute and push",
    ),
    Job(
        name=USAGE_ROLLUP,
        task=TASK_USAGE_ROLLUP,
        queue="maintenance",
        cadence=Hourly(minute=5),
        expires_seconds=3000,
        description="usage_daily for today and yesterday",
    ),
    Job(
        name=DAILY_MAINTENANCE,
        task=TASK_DAILY_MAINTENANCE,
        queue="maintenance",
        cadence=Daily(hour=2),
        expires_seconds=6 * 3600,
        description="retention purges, usage roll-up, orphaned artifacts",
    ),
    Job(
        name=MONTHLY_QUOTA_RESET,
        task=TASK_MONTHLY_QUOTA_RESET,
        queue="maintenance",
        cadence=Monthly(day=1, hour=0),
        expires_seconds=24 * 3600,
        description="open every account's usage period, grant monthly credits, lapsed notices",
    ),
)


def job_named(name: str) -> Job:
    """The job called name, or KeyError listing the known ones."""
    for job in JOBS:
        if job.name == name:
            return job
    raise KeyError(f"no job {name!r}; jobs: {', '.join(j.name for j in JOBS)}")


@dataclass(frozen=True)
class JobReport:
    """One job as operators see it: when it fires next, its current period, its last runs."""

    job: Job
    next_run_at: datetime
    current_period: str
    last_runs: list[MaintenanceRun]


def job_reports(db: Database, tz: ZoneInfo, now: datetime, *, runs_each: int) -> list[JobReport]:
    """Every job's report at `now` in tz, with up to runs_each of its latest runs."""
    recent = recent_runs(db, limit=runs_each)
    return [
        JobReport(
            job=job,
            next_run_at=job.cadence.next_due(now, tz),
            current_period=job.cadence.period_key(job.cadence.last_due(now, tz), tz),
            last_runs=[run for run in recent if run.job == job.name],
        )
        for job in JOBS
    ]
