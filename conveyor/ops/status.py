"""What operators look at: queue depths, worker heartbeats, every user's runs, run counts by
status and quota usage per plan (the dashboard and `conveyor status` read these)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import redis
from pydantic import BaseModel, Field, ValidationError

from conveyor.constants import REDIS_PREFIX
from conveyor.db import Database
from conveyor.errors import ServiceUnavailable
from conveyor.ops.broker_queues import Broker, BrokerUnreachable, QueueReader
from conveyor.pagination import Listing, newest_first
from conveyor.payload import Payload
from conveyor.runs.payloads import RunStatus, RunSummary

# Each worker keeps `conveyor:workers:<hostname>` alive; a worker that dies simply expires.
HEARTBEAT_PREFIX = f"{REDIS_PREFIX}workers:"
HEARTBEAT_SECONDS = 5.0
HEARTBEAT_TTL_SECONDS = 20
MAX_WORKERS_LISTED = 500
RUN_STATUSES: tuple[RunStatus, ...] = (
    "queued",
    "running",
    "waiting",
    "completed",
    "failed",
    "cancelled",
)
UNFINISHED: tuple[RunStatus, ...] = ("queued", "running", "waiting")


class WorkerHeartbeat(BaseModel):
    """What a worker says about itself every few seconds."""

    hostname: str
    pid: int
    concurrency: int
    queues: list[str]
    started_at: datetime
    seen_at: datetime
    active: int = 0  # tasks executing now
    processed: int = 0  # tasks finished since the worker started


class QueueDepth(BaseModel):
    """Messages waiting in one queue."""

    name: str
    depth: int


class QueueReport(BaseModel):
    """`GET /api/admin/queues`: what waits, what is being worked on, and by whom."""

    broker: Broker
    queues: list[QueueDepth]
    # Delivered to workers and not yet acknowledged; null on RabbitMQ, which tells only its
    # management API.
    unacked: int | None
    workers: list[WorkerHeartbeat]
    checked_at: datetime


def heartbeat_key(hostname: str) -> str:
    """The Redis key a worker's heartbeat lives under."""
    return f"{HEARTBEAT_PREFIX}{hostname}"


def write_heartbeat(
    client: redis.Redis, beat: WorkerHeartbeat, *, ttl: int = HEARTBEAT_TTL_SECONDS
) -> None:
    """Store a worker's heartbeat for ttl seconds (renewed by the next beat)."""
    client.set(heartbeat_key(beat.hostname), beat.model_dump_json(), ex=ttl)


def clear_heartbeat(client: redis.Redis, hostname: str) -> None:
    """Forget a worker that stopped cleanly (a crashed one expires instead)."""
    client.delete(heartbeat_key(hostname))


def read_heartbeats(client: redis.Redis) -> list[WorkerHeartbeat]:
    """Live workers' heartbeats by hostname; unreadable entries are skipped."""
    keys = []
    for key in client.scan_iter(match=f"{HEARTBEAT_PREFIX}*", count=200):
        keys.append(key)
        if len(keys) >= MAX_WORKERS_LISTED:
            break
    if not keys:
        return []
    beats = []
    for raw in client.mget(keys):
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            beats.append(WorkerHeartbeat.model_validate(json.loads(raw)))
        except (ValueError, ValidationError):
            continue
    return sorted(beats, key=lambda beat: beat.hostname)


def queue_report(reader: QueueReader, client: redis.Redis) -> QueueReport:
    """Depth of every queue and unacked messages from the broker, live workers from Redis;
    ServiceUnavailable when either does not answer."""
    try:
        depths = reader.depths()
        unacked = reader.unacked()
    except BrokerUnreachable as exc:
        raise ServiceUnavailable(f"{exc}; queues cannot be read.") from exc
    try:
        workers = read_heartbeats(client)
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"Redis is unreachable ({exc}); workers cannot be read.") from exc
    return QueueReport(
        broker=reader.broker,
        queues=[QueueDepth(name=q, depth=d) for q, d in depths.items()],
        unacked=unacked,
        workers=workers,
        checked_at=datetime.now(UTC),
    )


class AdminRunsQuery(Payload):
    """`GET /api/admin/runs` query parameters."""

    status: RunStatus | None = None
    workflow_id: str | None = Field(default=None, max_length=100)
    user_id: UUID | None = None
    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


class AdminRunSummary(RunSummary):
    """A run in the operators' listing: the summary plus whose it is."""

    user_id: UUID
    updated_at: datetime
    last_event_seq: int  # lets a client order this row against live events of the run


ALL_RUNS = Listing(
    table="workflow_runs",
    columns="id, user_id, kind, workflow_id, status, progress, current_step, session_id, "
    "error_code, created_at, started_at, finished_at, updated_at, last_event_seq",
    time_column="created_at",
    id_type="uuid",
    where="(%(status)s::text is null or status = %(status)s)"
    " and (%(workflow)s::text is null or workflow_id = %(workflow)s)"
    " and (%(user)s::uuid is null or user_id = %(user)s)",
)


def list_all_runs(db: Database, query: AdminRunsQuery) -> tuple[list[AdminRunSummary], str | None]:
    """Everyone's runs, newest first, keyset-paginated (admins only: the caller checks)."""
    with db.transaction() as conn:
        rows, next_cursor = newest_first(
            conn,
            ALL_RUNS,
            params={"status": query.status, "workflow": query.workflow_id, "user": query.user_id},
            limit=query.limit,
            cursor=query.cursor,
        )
    return [AdminRunSummary.model_validate(row) for row in rows], next_cursor


class RunStatsQuery(Payload):
    """`GET /api/admin/run-stats` query parameters."""

    hours: int = Field(default=24, ge=1, le=24 * 90)


class RunStats(BaseModel):
    """Runs by status: created in the last `hours`, and unfinished ones of any age."""

    hours: int
    since: datetime
    created: dict[str, int]
    unfinished: dict[str, int]


def run_stats(db: Database, *, hours: int) -> RunStats:
    """Counts of runs by status (every status present, zero when none)."""
    since = datetime.now(UTC) - timedelta(hours=hours)
    with db.transaction() as conn:
        created = conn.execute(
            "select status, count(*) as n from workflow_runs "
            "where created_at >= %s group by status",
            (since,),
        ).fetchall()
        # Each half matches a partial index (workflow_runs_unfinished, workflow_runs_waking),
        # whatever the table's size.
        unfinished = conn.execute(
            "select status, count(*) as n from workflow_runs "
            "where status in ('queued', 'running') group by status "
            "union all select 'waiting', count(*) from workflow_runs where status = 'waiting'"
        ).fetchall()
    return RunStats(
        hours=hours,
        since=since,
        created=_by_status(created, RUN_STATUSES),
        unfinished=_by_status(unfinished, UNFINISHED),
    )


def _by_status(rows: list[dict[str, Any]], statuses: tuple[str, ...]) -> dict[str, int]:
    counts = {status: 0 for status in statuses}
    counts.update({row["status"]: int(row["n"]) for row in rows})
    return counts


class PlanUsage(BaseModel):
    """One plan's users and their summed usage against their quotas this month."""

    plan_id: str
    name: str
    users: int
    active_users: int  # users with a usage period this month
    users_over_80_percent: int
    users_at_quota: int
    tokens_used: int
    token_quota: int
    cost_used_micro_usd: int
    cost_quota_micro_usd: int


class QuotaUsage(BaseModel):
    """`GET /api/admin/quota-usage`."""

    period_start: date
    plans: list[PlanUsage]


def quota_usage(db: Database, *, today: date | None = None) -> QuotaUsage:
    """Per plan, this month (UTC): users, tokens and cost used against their quotas."""
    period_start = (today or datetime.now(UTC).date()).replace(day=1)
    with db.transaction() as conn:
        rows = conn.execute(
            """
            select p.id as plan_id, p.name,
                   count(a.user_id) as users,
                   count(u.user_id) as active_users,
                   count(u.user_id) filter (
                     where u.token_quota > 0 and u.tokens_used * 5 >= u.token_quota * 4
                   ) as users_over_80_percent,
                   count(u.user_id) filter (where u.tokens_used >= u.token_quota)
                     as users_at_quota,
                   coalesce(sum(u.tokens_used), 0) as tokens_used,
                   coalesce(sum(u.token_quota), 0) as token_quota,
                   coalesce(sum(u.cost_used_micro_usd), 0) as cost_used_micro_usd,
                   coalesce(sum(u.cost_quota_micro_usd), 0) as cost_quota_micro_usd
              from plans p
              left join user_accounts a on a.plan_id = p.id
              left join usage_periods u
                on u.user_id = a.user_id and u.period_start = %s
             group by p.id, p.name, p.monthly_token_quota
             order by p.monthly_token_quota, p.id
            """,
            (period_start,),
        ).fetchall()
    return QuotaUsage(
        period_start=period_start, plans=[PlanUsage.model_validate(row) for row in rows]
    )
