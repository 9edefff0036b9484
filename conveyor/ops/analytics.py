"""Analytics, computed on read under RLS (admins see everyone, users themselves): KPIs against
the previous period and time series in UTC buckets.

Revenue is what exists before Stripe's tables do: credits bought, the sum of
`credit_transactions` of kind `purchase` (an amount in credits, not money).

Seed 001's names map onto these: a conversation is an agent session, a message an agent message,
a lead a user's first run (`new_users`), its conversion rate the runs' success rate.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from psycopg import sql
from pydantic import Field, model_validator

from conveyor.db import Connection, Database
from conveyor.events.run_events import EventPublisher
from conveyor.payload import Payload

# Routed to the `maintenance` queue by its prefix; beat fires it every PUSH_SECONDS.
TASK_PUSH_ANALYTICS = "maintenance.push_analytics"
PUSH_SECONDS = 60
# The topic web processes' hubs listen to for "recompute analytics now" (web/realtime.py).
ANALYTICS_SIGNAL = "analytics"

Metric = Literal[
    "runs",
    "successful_runs",
    "failed_runs",
    "success_rate",
    "tokens",
    "cost_micro_usd",
    "revenue_credits",
    "active_users",
    "new_users",
    "conversations",
    "messages",
    "active_conversations",
]
Aggregation = Literal["daily", "hourly"]
MAX_BUCKETS: dict[str, int] = {"daily": 366, "hourly": 24 * 31}
BUCKET_SIZE = {"daily": timedelta(days=1), "hourly": timedelta(hours=1)}
UNIT = {"daily": "day", "hourly": "hour"}

RUNS = "workflow_runs"
USAGE = "usage_events"
PURCHASES = "(select user_id, amount, created_at from credit_transactions where kind = 'purchase')"
# Someone is active in a bucket when they submitted a run or used a model in it.
ACTIVITY = (
    "(select user_id, created_at from workflow_runs "
    "union all select user_id, occurred_at from usage_events)"
)
# A "lead" is a user's first run: lead_trends counts users by the bucket of their first run.
FIRST_RUNS = "(select user_id, min(created_at) as created_at from workflow_runs group by 1)"
# Seed 001's conversations are agent sessions; a message carries its session's user.
MESSAGES = (
    "(select s.user_id, m.session_id, m.created_at from agent_messages m "
    "join agent_sessions s on s.id = m.session_id)"
)
# (source rows, their time column, the value per bucket): constants, never client input.
SOURCES: dict[str, tuple[str, str, str]] = {
    "runs": (RUNS, "created_at", "count(*)"),
    "successful_runs": (RUNS, "created_at", "count(*) filter (where status = 'completed')"),
    "failed_runs": (RUNS, "created_at", "count(*) filter (where status = 'failed')"),
    "success_rate": (
        RUNS,
        "created_at",
        "round(100.0 * count(*) filter (where status = 'completed') "
        "/ nullif(count(*) filter (where status in ('completed', 'failed')), 0), 2)",
    ),
    "tokens": (USAGE, "occurred_at", "sum(prompt_tokens + completion_tokens)"),
    "cost_micro_usd": (USAGE, "occurred_at", "sum(input_cost_micro_usd + output_cost_micro_usd)"),
    "revenue_credits": (PURCHASES, "created_at", "sum(amount)"),
    "active_users": (ACTIVITY, "created_at", "count(distinct user_id)"),
    "new_users": (FIRST_RUNS, "created_at", "count(*)"),
    "conversations": ("agent_sessions", "created_at", "count(*)"),
    "messages": (MESSAGES, "created_at", "count(*)"),
    # Sessions with a message in the bucket.
    "active_conversations": (MESSAGES, "created_at", "count(distinct session_id)"),
}
# Seed 001's names for metrics (`?metric=` and `?topic=` of trends, the overview's keys).
METRIC_ALIASES: dict[str, str] = {"leads": "new_users"}
# Ratios have no value without data; counts and sums are zero.
NULLABLE = frozenset({"success_rate"})
KPIS: tuple[Metric, ...] = (
    "runs",
    "success_rate",
    "tokens",
    "cost_micro_usd",
    "revenue_credits",
    "active_users",
)

# Seed 001's overview keys, each `{value, change}` beside the native `kpis`.
SEED_OVERVIEW: dict[str, Metric] = {
    "total_leads": "new_users",
    "active_conversations": "active_conversations",
    "conversion_rate": "success_rate",
    "total_revenue": "revenue_credits",
}


class OverviewQuery(Payload):
    """`?days=`: the period is the last `days` days, compared with the `days` before them."""

    days: int = Field(default=30, ge=1, le=365)


class TrendsQuery(Payload):
    """`?metric=&start=&end=&aggregation=`: start inclusive, end exclusive (default now). Seed
    001's names are taken too: `start_date`/`end_date`, and `topic` (`lead_trends`,
    `conversation_trends`, ...) or `metric=leads` for the metric."""

    metric: Metric | None = None
    start: datetime | None = None
    end: datetime | None = None
    aggregation: Aggregation = "daily"
    start_date: datetime | None = None
    end_date: datetime | None = None
    topic: str | None = Field(default=None, max_length=100)

    @model_validator(mode="before")
    @classmethod
    def _seed_names(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("metric") in METRIC_ALIASES:
            raw = {**raw, "metric": METRIC_ALIASES[raw["metric"]]}
        return raw

    @model_validator(mode="after")
    def _one_name_each(self) -> TrendsQuery:
        for native, seed in (("start", "start_date"), ("end", "end_date")):
            if getattr(self, seed) is not None:
                if getattr(self, native) is not None:
                    raise ValueError(f"send {native} or {seed}, not both")
                setattr(self, native, getattr(self, seed))
                setattr(self, seed, None)
        if self.topic is not None:
            if self.metric is not None:
                raise ValueError("send metric or topic, not both")
            if self.topic not in TOPIC_FIGURES:
                raise ValueError(f"topic must be one of {', '.join(sorted(TOPIC_FIGURES))}")
            self.metric = TOPIC_FIGURES[self.topic][0]  # type: ignore[assignment]
        if self.metric is None:
            raise ValueError("metric (or topic) is required")
        return self

    @model_validator(mode="after")
    def _a_bounded_range(self) -> TrendsQuery:
        default_span = BUCKET_SIZE[self.aggregation] * (30 if self.aggregation == "daily" else 24)
        try:
            end = _utc(self.end) if self.end else datetime.now(UTC)
            start = _utc(self.start) if self.start else end - default_span
        except OverflowError:
            # Year 1 or 9999 moved by a zone or the default span leaves datetime's range.
            raise ValueError("start and end must be between the years 2 and 9998") from None
        if start >= end:
            raise ValueError("start must be before end")
        buckets = (end - start) / BUCKET_SIZE[self.aggregation]
        if buckets > MAX_BUCKETS[self.aggregation]:
            raise ValueError(
                f"{self.aggregation} trends span at most {MAX_BUCKETS[self.aggregation]} buckets; "
                "narrow start..end or aggregate daily"
            )
        self.start, self.end = start, end
        return self


def newest_window(window: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A live window's params (start_date, open end) moved to its newest allowed buckets, once
    `now` has taken it past MAX_BUCKETS: the oldest buckets drop off, the subscription lives on."""
    aggregation = window.get("aggregation", "daily")
    if aggregation not in MAX_BUCKETS or "start_date" not in window or "end_date" in window:
        return window
    size = BUCKET_SIZE[aggregation]
    oldest = (now or datetime.now(UTC)) - size * (MAX_BUCKETS[aggregation] - 1)
    return {**window, "start_date": oldest.isoformat()}


def _utc(value: datetime) -> datetime:
    # A time without a zone is taken as UTC, the zone of every bucket.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def series(
    conn: Connection,
    metric: str,
    *,
    start: datetime,
    end: datetime,
    aggregation: Aggregation,
    user_id: UUID | None,
) -> list[dict[str, Any]]:
    """`[{date, value}]` for each bucket from start to end (empty buckets 0, or null for ratios);
    user_id None: every row RLS lets the caller see."""
    source, time_column, value = SOURCES[metric]
    query = sql.SQL(
        """
        with buckets as (
          select generate_series(date_trunc(%(unit)s, %(start)s::timestamptz, 'UTC'),
                                 %(end)s::timestamptz - interval '1 microsecond',
                                 %(step)s::interval) as bucket),
        figures as (
          select date_trunc(%(unit)s, s.{time}, 'UTC') as bucket, {value} as value
            from {source} s
           where s.{time} >= date_trunc(%(unit)s, %(start)s::timestamptz, 'UTC')
             and s.{time} < %(end)s
             and (%(user)s::uuid is null or s.user_id = %(user)s)
           group by 1)
        select b.bucket, f.value from buckets b left join figures f using (bucket)
         order by b.bucket
        """
    ).format(time=sql.Identifier(time_column), value=sql.SQL(value), source=sql.SQL(source))
    rows = conn.execute(
        query,
        {
            "unit": UNIT[aggregation],
            "start": start,
            "end": end,
            "step": BUCKET_SIZE[aggregation],
            "user": user_id,
        },
    ).fetchall()
    fill = None if metric in NULLABLE else 0
    return [
        {
            "date": row["bucket"].date().isoformat()
            if aggregation == "daily"
            else row["bucket"].isoformat(),
            "value": _number(row["value"], fill),
        }
        for row in rows
    ]


def _number(value: Any, fill: int | None) -> int | float | None:
    if value is None:
        return fill
    as_float = float(value)
    return int(as_float) if as_float.is_integer() and not isinstance(value, float) else as_float


def total(
    conn: Connection, metric: str, *, start: datetime, end: datetime, user_id: UUID | None
) -> int | float | None:
    """The metric over [start, end) as one figure."""
    source, time_column, value = SOURCES[metric]
    query = sql.SQL(
        "select {value} as value from {source} s where s.{time} >= %(start)s "
        "and s.{time} < %(end)s and (%(user)s::uuid is null or s.user_id = %(user)s)"
    ).format(time=sql.Identifier(time_column), value=sql.SQL(value), source=sql.SQL(source))
    row = conn.execute(query, {"start": start, "end": end, "user": user_id}).fetchone()
    return _number(row["value"] if row else None, None if metric in NULLABLE else 0)


def change_percent(current: int | float | None, previous: int | float | None) -> float | None:
    """Percent change from previous to current; None when there is nothing to compare with."""
    if current is None or previous is None or previous == 0:
        return None
    return round((current - previous) / previous * 100, 1)


def overview(
    db: Database,
    claims: dict[str, Any],
    *,
    days: int,
    user_id: UUID | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Each KPI over the last `days` days with its percent change against the `days` before;
    user_id None: everything the caller may see (an admin: everyone)."""
    end = now or datetime.now(UTC)
    start = end - timedelta(days=days)
    before = start - timedelta(days=days)
    figures: dict[str, Any] = {}
    with db.user_transaction(claims) as conn:
        for metric in dict.fromkeys([*KPIS, *SEED_OVERVIEW.values()]):
            current = total(conn, metric, start=start, end=end, user_id=user_id)
            previous = total(conn, metric, start=before, end=start, user_id=user_id)
            figures[metric] = {
                "value": current,
                "previous": previous,
                "change": change_percent(current, previous),
            }
    seed = {
        name: {"value": figures[metric]["value"], "change": figures[metric]["change"]}
        for name, metric in SEED_OVERVIEW.items()
    }
    return {
        "period": {"start": start.isoformat(), "end": end.isoformat(), "days": days},
        "kpis": {metric: figures[metric] for metric in KPIS},
        **seed,
    }


def trends(
    db: Database, claims: dict[str, Any], query: TrendsQuery, *, user_id: UUID | None
) -> dict[str, Any]:
    """The metric's series for a validated TrendsQuery."""
    assert query.metric is not None, "validated: set"
    assert query.start is not None, "validated: set"
    assert query.end is not None, "validated: set"
    with db.user_transaction(claims) as conn:
        points = series(
            conn,
            query.metric,
            start=query.start,
            end=query.end,
            aggregation=query.aggregation,
            user_id=user_id,
        )
    return {
        "metric": query.metric,
        "aggregation": query.aggregation,
        "start": query.start.isoformat(),
        "end": query.end.isoformat(),
        "series": points,
    }


def push_analytics(publisher: EventPublisher) -> None:
    """The roll-up tick: every web process recomputes the figures of its analytics sockets, each
    under its caller's RLS scope, and pushes them (nothing is computed without a subscriber)."""
    publisher.publish_messages(
        [(ANALYTICS_SIGNAL, {"event": "analytics_refresh", "ts": datetime.now(UTC).isoformat()})]
    )


# What each analytics websocket topic carries: (series metric, KPI metric or None).
TOPIC_FIGURES: dict[str, tuple[str | None, tuple[Metric, ...]]] = {
    "lead_trends": ("new_users", ()),
    "conversation_trends": ("conversations", ("conversations", "messages")),
    "usage_trends": ("tokens", ("tokens", "cost_micro_usd")),
    "run_stats": ("runs", ("runs", "success_rate", "active_users")),
    "revenue": ("revenue_credits", ("revenue_credits",)),
}


def topic_update(
    db: Database, claims: dict[str, Any], topic: str, *, days: int, user_id: UUID | None
) -> dict[str, Any]:
    """The data of an analytics topic's update: a daily series `[{date, value}]` over `days` and
    its KPIs `{value, change}` against the `days` before."""
    metric, kpi_metrics = TOPIC_FIGURES[topic]
    end = datetime.now(UTC)
    start = end - timedelta(days=days)
    before = start - timedelta(days=days)
    data: dict[str, Any] = {"days": days}
    with db.user_transaction(claims) as conn:
        if metric is not None:
            data["metric"] = metric
            data["series"] = series(
                conn, metric, start=start, end=end, aggregation="daily", user_id=user_id
            )
        kpis = {}
        for name in kpi_metrics:
            current = total(conn, name, start=start, end=end, user_id=user_id)
            previous = total(conn, name, start=before, end=start, user_id=user_id)
            kpis[name] = {"value": current, "change": change_percent(current, previous)}
        if kpis:
            data["kpis"] = kpis
    return data
