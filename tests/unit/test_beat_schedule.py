"""`beat_schedule.py`: the job list as the `beat_schedule` mapping Celery users read."""

from __future__ import annotations

from datetime import timedelta

from celery.schedules import crontab

from beat_schedule import beat_schedule
from conveyor.ops.jobs import JOBS


def test_every_job_is_in_the_mapping_with_its_task_and_queue() -> None:
    assert {
        name: (entry["task"], entry["options"]["queue"]) for name, entry in beat_schedule.items()
    } == {job.name: (job.task, job.queue) for job in JOBS}


def test_an_interval_job_is_a_timedelta() -> None:
    assert beat_schedule["requeue_stale_runs"]["schedule"] == timedelta(seconds=30)


def test_the_daily_job_is_a_crontab_at_its_hour() -> None:
    assert beat_schedule["daily_maintenance"]["schedule"] == crontab(minute=0, hour=2)


def test_the_monthly_job_is_a_crontab_on_its_day() -> None:
    assert beat_schedule["monthly_quota_reset"]["schedule"] == crontab(
        minute=0, hour=0, day_of_month=1
    )
