"""What the periodic jobs do. Each body takes the period it runs for and returns counts; it is
run once per period through conveyor.maintenance_runs.run_once (by the worker or the CLI).

Deletes go in batches of MAINTENANCE_BATCH_SIZE rows, one short transaction each, so they never
hold a table: concurrent inserts wait for nothing, and autovacuum reclaims space as they go.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import structlog
from psycopg import sql

from conveyor.constants import SCHEMA
from conveyor.db import Database
from conveyor.errors import InvalidInput
from conveyor.events.notifications import notify
from conveyor.runs import credit_waits
from conveyor.runs.artifacts import LocalArtifactStore, store_for
from conveyor.runs.resume import Resumed
from conveyor.runs.supabase_storage import SupabaseArtifactStore
from conveyor.settings import Settings

log = structlog.get_logger(__name__)

DAILY_MAINTENANCE = "daily_maintenance"
MONTHLY_QUOTA_RESET = "monthly_quota_reset"
USAGE_ROLLUP = "usage_rollup"
SUBSCRIPTION_LAPSED = "subscription_lapsed"
LAPSED_STATUSES = ("canceled", "unpaid", "incomplete_expired")
# Runs of jobs that fire every few seconds or minutes are kept this long; others much longer.
SHORT_JOB_RUNS_RETENTION = timedelta(days=2)
LONG_JOB_RUNS_RETENTION = timedelta(days=400)
SHORT_JOBS = (
    "requeue_stale_runs",
    "requeue_usage_batches",
    "requeue_stripe_events",
    "reconcile_stripe_events",
    "push_analytics",
    "requeue_webhook_deliveries",
    "wake_waiting_runs",
)

JobBody = Callable[[Database, Settings, str], dict[str, int]]


def daily_maintenance(db: Database, settings: Settings, period: str) -> dict[str, int]:
    """Retention purges, yesterday's and today's usage roll-up, orphaned artifacts."""
    now = datetime.now(UTC)
    batch = settings.maintenance_batch_size
    counts = {
        "run_events": purge(
            db, "run_events", "created_at", now - days(settings.run_events_retention_days), batch
        ),
        "usage_events": purge(
            db,
            "usage_events",
            "occurred_at",
            now - days(settings.usage_events_retention_days),
            batch,
        ),
        "audit_logs": purge(
            db, "audit_logs", "occurred_at", now - days(settings.audit_logs_retention_days), batch
        ),
        "maintenance_runs": purge_job_runs(db, now, batch),
        "runs_per_day": purge_run_counts(db, now),
        "artifacts": delete_orphaned_artifacts(db, settings),
    }
    today = date.fromisoformat(period) if len(period) == 10 else now.date()
    counts["usage_daily_rows"] = sum(
        rollup_usage(db, day) for day in (today - timedelta(days=1), today)
    )
    return counts


def usage_rollup(db: Database, settings: Settings, period: str) -> dict[str, int]:
    """Roll up today's and yesterday's usage (UTC days) into usage_daily."""
    today = datetime.now(UTC).date()
    rows = sum(rollup_usage(db, day) for day in (today - timedelta(days=1), today))
    return {"usage_daily_rows": rows}


def monthly_quota_reset(
    db: Database,
    settings: Settings,
    period: str,
    *,
    on_resumed: Callable[[list[Resumed]], None] | None = None,
) -> dict[str, int]:
    """Open the month's usage period for every account (with its plan's limits), grant the plan's
    monthly credits once, and notify users whose subscription lapsed last month. Runs waiting for
    credits of a user who got a grant are queued again and handed to on_resumed after commit."""
    month = parse_month(period)
    users = opened = granted = resumed = 0
    after = uuid.UUID(int=0)
    while True:
        with db.transaction() as conn:
            rows = conn.execute(
                """
                select a.user_id, reset_period(a.user_id, %(month)s) as granted
                  from (select user_id from user_accounts where user_id > %(after)s
                         order by user_id limit %(limit)s) a
                """,
                {"month": month, "after": after, "limit": settings.maintenance_batch_size},
            ).fetchall()
        if not rows:
            break
        users += len(rows)
        granted += sum(1 for row in rows if row["granted"])
        after = rows[-1]["user_id"]
        for account in rows:
            if account["granted"]:
                runs = credit_waits.resume_credit_waiters(db, account["user_id"])
                resumed += len(runs)
                if runs and on_resumed is not None:
                    on_resumed(runs)
    with db.transaction() as conn:
        row = conn.execute(
            "select count(*) as n from usage_periods where period_start = %s", (month,)
        ).fetchone()
        opened = int(row["n"]) if row else 0
    return {
        "accounts": users,
        "periods_open": opened,
        "credit_grants": granted,
        "lapsed_notified": notify_lapsed(db, month),
        "credit_waits_resumed": resumed,
    }


def notify_lapsed(db: Database, month: date) -> int:
    """A notification, once per subscription and month, for subscriptions that ended during the
    previous month and left the user on the free plan."""
    previous = (month - timedelta(days=1)).replace(day=1)
    notified = 0
    with db.transaction() as conn:
        lapsed = conn.execute(
            """
            select s.stripe_subscription_id, s.user_id, s.plan_id
              from user_subscriptions s
              join user_accounts a on a.user_id = s.user_id
             where s.status = any(%s) and s.updated_at >= %s and s.updated_at < %s
               and a.plan_id = 'free'
            """,
            (list(LAPSED_STATUSES), previous, month),
        ).fetchall()
        for sub in lapsed:
            note = notify(
                conn,
                sub["user_id"],
                SUBSCRIPTION_LAPSED,
                "warning",
                "Your subscription has ended",
                f"Your {sub['plan_id']} plan ended, so you are on the free plan from this month. "
                "Subscribe again to get its limits and credits back.",
                action_url="/billing",
                metadata={"subscription": sub["stripe_subscription_id"]},
                dedupe_key=f"lapsed:{sub['stripe_subscription_id']}:{month:%Y-%m}",
            )
            notified += int(note is not None)
    return notified


def purge(db: Database, table: str, column: str, cutoff: datetime, batch: int) -> int:
    """Delete rows of table older than cutoff, batch rows per transaction; returns how many.
    table and column are constants of this module, never input."""
    statement = sql.SQL(
        "delete from {table} where id in "
        "(select id from {table} where {column} < %s order by {column} limit %s)"
    ).format(table=sql.Identifier(SCHEMA, table), column=sql.Identifier(column))
    total = 0
    while True:
        with db.transaction() as conn:
            deleted = conn.execute(statement, (cutoff, batch)).rowcount
        total += deleted
        if deleted < batch:
            return total


def purge_run_counts(db: Database, now: datetime) -> int:
    """Admission's per-day run counters of days before yesterday: only today's is read."""
    with db.transaction() as conn:
        return conn.execute(
            "delete from runs_per_day where day < %s", (now.date() - timedelta(days=1),)
        ).rowcount


def purge_job_runs(db: Database, now: datetime, batch: int) -> int:
    """Old maintenance_runs: runs of frequent jobs after two days, others after 400."""
    total = 0
    for jobs, keep, negate in (
        (SHORT_JOBS, SHORT_JOB_RUNS_RETENTION, False),
        (SHORT_JOBS, LONG_JOB_RUNS_RETENTION, True),
    ):
        while True:
            with db.transaction() as conn:
                deleted = conn.execute(
                    """
                    delete from maintenance_runs where id in (
                      select id from maintenance_runs
                       where started_at < %s and (job = any(%s)) <> %s
                       limit %s)
                    """,
                    (now - keep, list(jobs), negate, batch),
                ).rowcount
            total += deleted
            if deleted < batch:
                break
    return total


def rollup_usage(db: Database, day: date) -> int:
    """Replace usage_daily's rows for a UTC day with totals from usage_events; returns rows."""
    start = datetime.combine(day, datetime.min.time(), UTC)
    with db.transaction() as conn:
        conn.execute("delete from usage_daily where day = %s", (day,))
        return conn.execute(
            """
            insert into usage_daily
              (day, user_id, model, requests, prompt_tokens, completion_tokens, cost_micro_usd,
               failed)
            select %(day)s, user_id, model, count(*), sum(prompt_tokens), sum(completion_tokens),
                   sum(input_cost_micro_usd + output_cost_micro_usd),
                   count(*) filter (where not success)
              from usage_events
             where occurred_at >= %(start)s and occurred_at < %(end)s
             group by user_id, model
            """,
            {"day": day, "start": start, "end": start + timedelta(days=1)},
        ).rowcount


def delete_orphaned_artifacts(db: Database, settings: Settings) -> int:
    """The stored outputs of runs that no longer exist (each run's outputs are under a folder
    named by its id): in Supabase Storage or the local folder. How many runs' were deleted."""
    store = store_for(settings)
    delete: Callable[[str], object]
    if isinstance(store, SupabaseArtifactStore):
        names, delete = store.run_folders(), store.delete_folder
    elif isinstance(store, LocalArtifactStore) and store.root.is_dir():
        root = store.root
        names = [folder.name for folder in root.iterdir()]
        delete = lambda name: shutil.rmtree(root / name, ignore_errors=True)  # noqa: E731
    else:
        return 0
    folders: dict[uuid.UUID, str] = {}
    for name in names:
        try:
            folders[uuid.UUID(name)] = name
        except ValueError:
            continue
    if not folders:
        return 0
    with db.transaction() as conn:
        rows = conn.execute(
            "select id from workflow_runs where id = any(%s)", (list(folders),)
        ).fetchall()
    orphaned = set(folders) - {row["id"] for row in rows}
    for run_id in orphaned:
        delete(folders[run_id])
    return len(orphaned)


def parse_month(period: str) -> date:
    """`2026-11` → the 1st of that month, or InvalidInput."""
    try:
        return datetime.strptime(period, "%Y-%m").date()
    except ValueError as exc:
        raise InvalidInput(f"period must look like 2026-11, not {period!r}") from exc


def days(count: int) -> timedelta:
    """count days."""
    return timedelta(days=count)


# The jobs the CLI can run in-process (the others send Celery tasks and run only in a worker).
BODIES: dict[str, JobBody] = {
    DAILY_MAINTENANCE: daily_maintenance,
    MONTHLY_QUOTA_RESET: monthly_quota_reset,
    USAGE_ROLLUP: usage_rollup,
}
