"""The periodic schedule as Celery users read one: `beat_schedule` maps each job's name to its
task, schedule and options, built from the job list the domain owns (conveyor/ops/jobs.py).

What fires them is worker/scheduler.py: one beat process at a time sends each job once per
period through conveyor.ops.schedule, in CONVEYOR_TIMEZONE, so this mapping is for reading and
for Celery tooling; Celery's own scheduler entries stay empty.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab

from conveyor.ops.jobs import JOBS
from conveyor.ops.schedule import Cadence, Daily, Every, Hourly, Monthly


def celery_schedule(cadence: Cadence) -> timedelta | crontab:
    """A cadence in Celery's terms: an interval, or a crontab in the app's timezone."""
    if isinstance(cadence, Every):
        return timedelta(seconds=cadence.seconds)
    if isinstance(cadence, Hourly):
        return crontab(minute=cadence.minute)
    if isinstance(cadence, Daily):
        return crontab(minute=cadence.minute, hour=cadence.hour)
    if isinstance(cadence, Monthly):
        return crontab(minute=cadence.minute, hour=cadence.hour, day_of_month=cadence.day)
    raise TypeError(f"no Celery schedule for {cadence!r}")


beat_schedule: dict[str, dict[str, Any]] = {
    job.name: {
        "task": job.task,
        "schedule": celery_schedule(job.cadence),
        "options": {"queue": job.queue, "expires": job.expires_seconds},
    }
    for job in JOBS
}
