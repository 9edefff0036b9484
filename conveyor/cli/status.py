"""`conveyor status`: queues, workers, runs by status and the last maintenance runs, in a
terminal (or as JSON with `--json`). Exit 1 when Postgres or Redis could not be read, 2 when the
database is not migrated."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click
import redis
from pydantic import BaseModel

from conveyor import ops
from conveyor.cli.backing import migrated_database
from conveyor.db import Database
from conveyor.errors import ConveyorError
from conveyor.ops import job_runs
from conveyor.ops.job_runs import MaintenanceRun
from conveyor.settings import Settings, get_settings


class StatusReport(BaseModel):
    """Everything `conveyor status` shows; a part that could not be read is None with a reason."""

    checked_at: datetime
    queues: ops.QueueReport | None = None
    queues_error: str | None = None
    runs: ops.RunStats | None = None
    maintenance: list[MaintenanceRun] | None = None
    database_error: str | None = None

    @property
    def ok(self) -> bool:
        """Both services answered."""
        return self.queues_error is None and self.database_error is None


def read_queues(settings: Settings) -> tuple[ops.QueueReport | None, str | None]:
    """(queue report, None) or (None, why not)."""
    broker_url = settings.celery_broker_url()
    if settings.redis_url is None or broker_url is None:
        # An embedded Redis started here would be a new, empty one: ask for the running one's.
        return None, "REDIS_URL is not set (`conveyor run` prints its embedded Redis's URL)"
    reader = ops.queue_reader(broker_url, timeout=2)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return ops.queue_report(reader, client), None
    except ConveyorError as exc:
        return None, exc.message
    finally:
        reader.close()
        client.close()


def collect(settings: Settings, database_url: str, *, hours: int) -> StatusReport:
    """Read queues from the broker, workers from Redis, runs and maintenance from Postgres."""
    report = StatusReport(checked_at=datetime.now(UTC))
    report.queues, report.queues_error = read_queues(settings)
    db = Database(database_url, min_size=0, max_size=1)
    try:
        report.runs = ops.run_stats(db, hours=hours)
        report.maintenance = job_runs.recent_runs(db, limit=1)
    except ConveyorError as exc:
        report.database_error = exc.message
    finally:
        db.close()
    return report


def ago(at: datetime, now: datetime) -> str:
    """`12 s ago`, `3 min ago`, `5 h ago` (or `in …` for the future)."""
    seconds = (now - at).total_seconds()
    span = abs(seconds)
    text = (
        f"{span:.0f} s"
        if span < 120
        else f"{span / 60:.0f} min"
        if span < 7200
        else f"{span / 3600:.0f} h"
        if span < 172_800
        else f"{span / 86_400:.0f} d"
    )
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def render(report: StatusReport) -> list[str]:
    """The report as terminal lines."""
    now = report.checked_at
    lines = [f"Conveyor status at {now:%Y-%m-%d %H:%M:%S} UTC", ""]
    if report.queues is None:
        lines += [f"Queues: unknown: {report.queues_error}", "Workers: unknown", ""]
    else:
        lines.append(f"Queues on {report.queues.broker} (messages waiting)")
        lines += [f"  {q.name:<14}{q.depth:>8}" for q in report.queues.queues]
        if report.queues.unacked is not None:
            lines.append(f"  {'(unacked)':<14}{report.queues.unacked:>8}")
        lines.append("")
        workers = report.queues.workers
        lines.append(f"Workers ({len(workers)} with a live heartbeat)")
        lines += [
            f"  {w.hostname}  pid {w.pid}  active {w.active}/{w.concurrency}  "
            f"processed {w.processed}  queues {','.join(w.queues)}  "
            f"seen {ago(w.seen_at, now)}, up {ago(w.started_at, now).removesuffix(' ago')}"
            for w in workers
        ] or ["  none: start one with `celery -A worker.app worker` or `conveyor run`"]
        lines.append("")
    if report.runs is None or report.maintenance is None:
        lines += [f"Runs and maintenance: unknown: {report.database_error}"]
        return lines
    stats = report.runs
    lines.append(f"Runs created in the last {stats.hours} h")
    lines.append("  " + "  ".join(f"{status} {n}" for status, n in stats.created.items()))
    lines.append(
        "  unfinished now: " + ", ".join(f"{status} {n}" for status, n in stats.unfinished.items())
    )
    lines += ["", "Last maintenance runs"]
    lines += [
        f"  {run.job:<24}{run.period_key:<22}{run.status:<10}"
        f"{ago(run.started_at, now):<14}{run.error or json.dumps(run.rows_affected)}"
        for run in report.maintenance
    ] or ["  none yet"]
    return lines


@click.command()
@click.option("--hours", type=click.IntRange(1, 24 * 90), default=24, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def status(hours: int, as_json: bool) -> None:
    """Queues, workers, runs by status and the last maintenance runs."""

    settings = get_settings()
    # An unreachable database is part of the report (exit 1), beside what Redis says.
    with migrated_database(settings, unreachable_ok=True) as url:
        report = collect(settings, url, hours=hours)
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        click.echo("\n".join(render(report)))
    raise SystemExit(0 if report.ok else 1)
