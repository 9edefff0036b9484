"""`conveyor maintenance list | run`: the periodic jobs, their schedule and last runs, and running
one for a period through the same once-per-period claim the scheduler's runs take."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import click

from conveyor.cli.backing import migrated_database
from conveyor.db import Database
from conveyor.ops import job_runs, maintenance, user_schedules
from conveyor.ops.jobs import job_named, job_reports
from conveyor.ops.schedule import valid_period
from conveyor.settings import get_settings


@click.group()
def maintenance_group() -> None:
    """Periodic jobs: list them with their last runs, or run one for a period."""


@maintenance_group.command("list")
def list_jobs() -> None:
    """Each job: schedule, next fire time, last runs."""
    settings = get_settings()
    with migrated_database(settings) as url:
        db = Database(url, max_size=1)
        try:
            reports = job_reports(db, ZoneInfo(settings.timezone), datetime.now(UTC), runs_each=3)
            schedules = user_schedules.overview(db, limit=5)
        finally:
            db.close()
    for report in reports:
        next_due = report.next_run_at.astimezone(ZoneInfo(settings.timezone))
        click.echo(
            f"{report.job.name}: {report.job.cadence.describe()} ({settings.timezone}), "
            f"next {next_due:%Y-%m-%d %H:%M:%S %Z}"
        )
        for run in report.last_runs:
            click.echo(
                f"  {run.period_key}: {run.status}, attempts {run.attempts}, skipped "
                f"{run.skipped}, {run.rows_affected or ''}{run.error or ''}"
            )
    click.echo(f"API schedules: {schedules.active} active, {schedules.paused} paused")
    for one in schedules.next:
        click.echo(
            f"  {one['workflow_id']} ({one['cron']}, {one['timezone']}), next "
            f"{one['next_due_at']:%Y-%m-%d %H:%M:%S %Z}, user {one['user_id']}"
            + (f", last refused: {one['last_error_code']}" if one["last_error_code"] else "")
        )


@maintenance_group.command("run")
@click.argument("job")
@click.option("--period", default=None, help="The period, e.g. 2026-11 (default: the current).")
def run_job(job: str, period: str | None) -> None:
    """Run JOB for a period now, unless that period already ran (then it says skipped)."""

    body = maintenance.BODIES.get(job)
    if body is None:
        raise click.UsageError(
            f"{job!r} cannot be run from here; jobs: {', '.join(sorted(maintenance.BODIES))}"
        )
    settings = get_settings()
    cadence = job_named(job).cadence
    tz = ZoneInfo(settings.timezone)
    key = period or cadence.period_key(cadence.last_due(datetime.now(UTC), tz), tz)
    if not valid_period(cadence, key):
        raise click.UsageError(
            f"{key!r} is not a period of {job}; use the form {cadence.period_format!r}"
        )
    with migrated_database(settings) as url:
        db = Database(url, max_size=2)
        try:
            outcome = job_runs.run_once(
                db, job, key, lambda: body(db, settings, key), claimed_by="cli"
            )
        finally:
            db.close()
    if outcome.ran:
        click.echo(f"ran {job} for {key}: {outcome.counts}")
    else:
        click.echo(f"skipped: {job} for {key} already ran (or is running); nothing changed")
