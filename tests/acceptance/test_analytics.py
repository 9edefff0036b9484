"""`/api/analytics/overview`, `/api/analytics/trends` and `/api/ws/analytics`: figures against the
previous period, series in UTC buckets, every parameter validated; admins see all users."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery

from conveyor.auth.tenancy import grant_admin
from conveyor.db import Database
from conveyor.ops.analytics import TASK_PUSH_ANALYTICS
from tests.support import ApiClient

ClientFactory = Callable[..., ApiClient]
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
# Inside the last 30 days, and inside the 30 days before them.
RECENT = TODAY - timedelta(days=1) + timedelta(hours=12)
EARLIER = TODAY - timedelta(days=40)


def add_run(db: Database, user: uuid.UUID, status: str, at: datetime) -> None:
    with db.transaction() as conn:
        conn.execute(
            "insert into workflow_runs (user_id, kind, workflow_id, status, created_at, "
            "finished_at) values (%s, 'agent', 'echo', %s, %s, %s)",
            (user, status, at, at if status in ("completed", "failed") else None),
        )


def add_usage(db: Database, user: uuid.UUID, tokens: int, cost: int, at: datetime) -> None:
    with db.transaction() as conn:
        conn.execute(
            "insert into usage_events (user_id, idempotency_key, provider, model, prompt_tokens, "
            "completion_tokens, input_cost_micro_usd, output_cost_micro_usd, occurred_at) "
            "values (%s, %s, 'openai', 'gpt-4o-mini', %s, 0, %s, 0, %s)",
            (user, uuid.uuid4().hex, tokens, cost, at),
        )


def add_purchase(db: Database, user: uuid.UUID, credits: int, at: datetime) -> None:
    with db.transaction() as conn:
        conn.execute(
            "insert into credit_transactions (user_id, amount, balance_after, kind, reference, "
            "created_at) values (%s, %s, %s, 'purchase', %s, %s)",
            (user, credits, credits, uuid.uuid4().hex, at),
        )


@pytest.fixture
def history(db: Database, user_id: uuid.UUID) -> uuid.UUID:
    """user_id: 3 completed and 1 failed run, 1,000 tokens, 500 credits bought recently; 2
    completed runs, 400 tokens, no purchase in the period before. Another user: 1 run recently."""
    for status in ("completed", "completed", "completed", "failed"):
        add_run(db, user_id, status, RECENT)
    for _ in range(2):
        add_run(db, user_id, "completed", EARLIER)
    add_usage(db, user_id, 600, 90, RECENT)
    add_usage(db, user_id, 400, 60, RECENT)
    add_usage(db, user_id, 400, 50, EARLIER)
    add_purchase(db, user_id, 500, RECENT)
    other = uuid.uuid4()
    add_run(db, other, "failed", RECENT)
    return other


def test_the_overview_compares_the_callers_figures_with_the_previous_period(
    history: uuid.UUID, client: ApiClient
) -> None:
    body = client.get("/api/analytics/overview", params={"days": 30}).json()

    assert body["scope"] == "own"
    assert body["period"]["days"] == 30
    kpis = body["kpis"]
    assert kpis["runs"] == {"value": 4, "previous": 2, "change": 100.0}
    assert kpis["success_rate"] == {"value": 75.0, "previous": 100.0, "change": -25.0}
    assert kpis["tokens"] == {"value": 1000, "previous": 400, "change": 150.0}
    assert kpis["cost_micro_usd"] == {"value": 150, "previous": 50, "change": 200.0}
    assert kpis["revenue_credits"] == {"value": 500, "previous": 0, "change": None}
    assert kpis["active_users"] == {"value": 1, "previous": 1, "change": 0.0}


def test_an_admin_overview_covers_every_user(
    history: uuid.UUID, db: Database, make_client: ClientFactory
) -> None:
    admin = uuid.uuid4()
    grant_admin(db, admin)
    body = make_client(admin).get("/api/analytics/overview").json()

    assert body["scope"] == "all"
    assert body["kpis"]["runs"]["value"] == 5
    assert body["kpis"]["active_users"]["value"] == 2
    assert body["kpis"]["success_rate"]["value"] == 60.0


def test_daily_trends_fill_every_day_of_the_range(history: uuid.UUID, client: ApiClient) -> None:
    start, end = (TODAY - timedelta(days=3)).date(), (TODAY + timedelta(days=1)).date()
    body = client.get(
        "/api/analytics/trends",
        params={"metric": "runs", "start": start.isoformat(), "end": end.isoformat()},
    ).json()

    assert body["aggregation"] == "daily"
    assert body["series"] == [
        {"date": (TODAY - timedelta(days=n)).date().isoformat(), "value": value}
        for n, value in ((3, 0), (2, 0), (1, 4), (0, 0))
    ]


def test_hourly_trends_bucket_by_hour(history: uuid.UUID, client: ApiClient) -> None:
    body = client.get(
        "/api/analytics/trends",
        params={
            "metric": "tokens",
            "aggregation": "hourly",
            "start": (RECENT - timedelta(hours=2)).isoformat(),
            "end": (RECENT + timedelta(hours=2)).isoformat(),
        },
    ).json()
    assert [point["value"] for point in body["series"]] == [0, 0, 1000, 0]
    assert body["series"][2]["date"] == RECENT.isoformat()


def test_a_ratio_without_data_is_null_not_zero(history: uuid.UUID, client: ApiClient) -> None:
    start = (TODAY - timedelta(days=2)).isoformat()
    body = client.get(
        "/api/analytics/trends",
        params={"metric": "success_rate", "start": start, "end": TODAY.isoformat()},
    ).json()
    assert [point["value"] for point in body["series"]] == [None, 75.0]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/analytics/trends", {}),
        ("/api/analytics/trends", {"metric": "bogus"}),
        ("/api/analytics/trends", {"metric": "runs", "aggregation": "weekly"}),
        ("/api/analytics/trends", {"metric": "runs", "start": "2026-11-10", "end": "2026-11-01"}),
        ("/api/analytics/trends", {"metric": "runs", "start": "yesterday"}),
        (
            "/api/analytics/trends",
            {"metric": "runs", "aggregation": "hourly", "start": "2026-01-01", "end": "2026-03-01"},
        ),
        ("/api/analytics/trends", {"metric": "runs", "start": "2020-01-01", "end": "2026-01-01"}),
        ("/api/analytics/trends", {"metric": "runs", "colour": "red"}),
        ("/api/analytics/overview", {"days": 0}),
        ("/api/analytics/overview", {"days": 366}),
        ("/api/analytics/overview", {"days": "a week"}),
    ],
)
def test_every_parameter_is_validated(client: ApiClient, path: str, params: dict[str, Any]) -> None:
    response = client.get(path, params=params)
    assert (response.status_code, response.json()["code"]) == (400, "INVALID_INPUT"), response.text


def test_analytics_need_a_token(anonymous: ApiClient) -> None:
    assert anonymous.get("/api/analytics/overview").status_code == 401


def test_the_analytics_channel_sends_kpis_then_pushes_when_the_roll_up_runs(
    history: uuid.UUID,
    worker: Any,
    celery_app: Celery,
    connect: Any,
    user_id: uuid.UUID,
) -> None:
    sock = connect("analytics", user_id)
    sock.send(type="subscribe", topic="run_stats", params={"days": 30})
    assert sock.recv() == {"type": "subscribed", "topic": "run_stats"}
    first = sock.recv()

    celery_app.send_task(TASK_PUSH_ANALYTICS)
    pushed = sock.recv()

    assert (first["channel"], first["event"], first["seq"]) == ("analytics", "analytics_update", 1)
    assert first["data"]["kpis"]["runs"] == {"value": 4, "change": 100.0}
    assert first["data"]["series"][-2] == {"date": RECENT.date().isoformat(), "value": 4}
    assert (pushed["event"], pushed["seq"]) == ("analytics_update", 2)


@pytest.mark.parametrize(
    ("topic", "kpi"),
    [("usage_trends", "tokens"), ("revenue", "revenue_credits"), ("lead_trends", None)],
)
def test_each_analytics_topic_sends_a_series(
    history: uuid.UUID,
    connect: Any,
    user_id: uuid.UUID,
    topic: str,
    kpi: str | None,
) -> None:
    sock = connect("analytics", user_id)
    sock.send(type="subscribe", topic=topic)
    sock.recv()
    data = sock.recv()["data"]
    assert len(data["series"]) in (30, 31)  # a partial first day adds a bucket
    if kpi is not None:
        assert data["kpis"][kpi]["value"] > 0


def test_the_analytics_channel_refuses_unknown_topics_and_bad_params(
    connect: Any,
) -> None:
    sock = connect("analytics")
    sock.send(type="subscribe", topic="workflow_run:1")
    assert sock.recv()["code"] == "INVALID_TOPIC"
    sock.send(type="subscribe", topic="run_stats", params={"days": "many"})
    assert sock.recv()["code"] == "BAD_REQUEST"
    sock.expect_quiet()
