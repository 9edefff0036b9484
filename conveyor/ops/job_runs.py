"""`maintenance_runs`: each periodic job runs once per period. A run claims (job, period) first;
a refused claim (done, or running elsewhere) is a recorded no-op."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from conveyor.db import Database

log = structlog.get_logger(__name__)

# A run still `running` after this long lost its worker; its period may be claimed again.
STALE_AFTER = timedelta(hours=2)


class MaintenanceRun(BaseModel):
    """One claimed period of a job."""

    id: int
    job: str
    period_key: str
    status: Literal["running", "succeeded", "failed"]
    attempts: int
    skipped: int
    claimed_by: str | None
    started_at: datetime
    finished_at: datetime | None
    rows_affected: dict[str, Any]
    error: str | None


class Outcome(BaseModel):
    """What asking to run (job, period) did."""

    job: str
    period_key: str
    ran: bool  # False: the period was done or running elsewhere (recorded as skipped)
    counts: dict[str, int] = {}


def claim(db: Database, job: str, period_key: str, *, claimed_by: str | None = None) -> int | None:
    """The run id if this caller now owns (job, period), else None (counted as skipped)."""
    with db.transaction() as conn:
        row = conn.execute(
            "select claim_maintenance_run(%s, %s, %s, %s) as id",
            (job, period_key, claimed_by or socket.gethostname(), STALE_AFTER),
        ).fetchone()
    return None if row is None or row["id"] is None else int(row["id"])


def finish(db: Database, run_id: int, counts: dict[str, int]) -> None:
    """Record a run as succeeded with what it did."""
    with db.transaction() as conn:
        conn.execute(
            "update maintenance_runs set status = 'succeeded', finished_at = now(), "
            "rows_affected = %s, error = null where id = %s",
            (Jsonb(counts), run_id),
        )


def fail(db: Database, run_id: int, error: str) -> None:
    """Record a run as failed (its period may be claimed again)."""
    with db.transaction() as conn:
        conn.execute(
            "update maintenance_runs set status = 'failed', finished_at = now(), "
            "error = left(%s, 2000) where id = %s",
            (error, run_id),
        )


def run_once(
    db: Database,
    job: str,
    period_key: str,
    body: Callable[[], dict[str, int]],
    *,
    claimed_by: str | None = None,
) -> Outcome:
    """Run body for (job, period) if this caller can claim it; record the outcome."""
    run_id = claim(db, job, period_key, claimed_by=claimed_by)
    if run_id is None:
        log.info("maintenance_skipped", job=job, period=period_key)
        return Outcome(job=job, period_key=period_key, ran=False)
    try:
        counts = body()
    except Exception as exc:
        fail(db, run_id, f"{type(exc).__name__}: {exc}")
        raise
    finish(db, run_id, counts)
    log.info("maintenance_done", job=job, period=period_key, **counts)
    return Outcome(job=job, period_key=period_key, ran=True, counts=counts)


def recent_runs(db: Database, job: str | None = None, limit: int = 10) -> list[MaintenanceRun]:
    """The latest runs, newest first (of one job, or of each job `limit` at most)."""
    with db.transaction() as conn:
        rows = conn.execute(
            """
            select * from (
              select m.*, row_number() over (partition by job order by started_at desc) as n
                from maintenance_runs m
               where %(job)s::text is null or job = %(job)s) r
             where n <= %(limit)s
             order by job, started_at desc
            """,
            {"job": job, "limit": limit},
        ).fetchall()
    return [MaintenanceRun.model_validate(row) for row in rows]
