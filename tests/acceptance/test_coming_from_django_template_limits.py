"""Seed 003 (the Django + Supabase template): the tiers' requests a day (with the time set by
the test) and credits charged per path, on the template's trailing-slash paths."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from conveyor.db import Database
from tests.acceptance.django_template_calls import (
    CREDENTIALS,
    ClientFactory,
    Clock,
    add_rate,
    set_daily_limit,
)
from tests.fake_supabase_auth import SERVICE_KEY
from tests.support import ApiClient, LiveServer
from web.compat import django_template

USES_FAKE_AUTH = True
SETTINGS = {"supabase_service_role_key": SERVICE_KEY}
FREE_PLAN_CREDITS = 100  # what a new account starts with (plans.monthly_credit_grant of free)
LIMIT_DETAIL = "Request limit exceeded. Try again later."
CREDITS_DETAIL = "Insufficient credits for this operation."


@pytest.fixture
def clock(live_server: LiveServer) -> Clock:
    """A minute before midnight UTC on a day that is not today."""
    fixed = Clock(datetime(2031, 3, 14, 23, 59, tzinfo=UTC))
    live_server.app.extensions[django_template.LIMITS].clock = fixed
    return fixed


def test_the_plans_allow_the_documented_requests_a_day(db: Database) -> None:
    with db.connection() as conn:
        rows = conn.execute("select id, daily_api_request_limit as n from plans").fetchall()
    assert {row["id"]: row["n"] for row in rows} == {
        "free": 100,
        "basic": 1_000,
        "premium": 5_000,
        "enterprise": 10_000,
    }


def test_past_the_plans_daily_limit_a_users_request_is_429_until_midnight_utc(
    client: ApiClient, make_client: ClientFactory, db: Database, clock: Clock
) -> None:
    set_daily_limit(db, "free", 2)
    assert [client.get("/api/credits/").status_code for _ in range(2)] == [200, 200]

    refused = client.get("/api/users/me/")

    assert refused.status_code == 429
    body = refused.json()
    assert (body["detail"], body["code"]) == (LIMIT_DETAIL, "RATE_LIMITED")
    assert refused.headers["Retry-After"] == "60"
    assert make_client().get("/api/users/me/").status_code == 200  # each user has their own
    clock.now += timedelta(minutes=1)
    assert client.get("/api/users/me/").status_code == 200


def test_anonymous_callers_get_100_requests_a_day_per_address_and_health_is_not_counted(
    anonymous: ApiClient, clock: Clock
) -> None:
    statuses = [anonymous.post("/api/login/", json={}).status_code for _ in range(101)]

    assert statuses == [400] * 100 + [429]
    assert anonymous.post("/api/register/", json=CREDENTIALS).json()["detail"] == LIMIT_DETAIL
    assert anonymous.get("/api/health/").status_code == 200


def test_a_priced_path_is_charged_once_per_request_before_its_view_runs(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    add_rate(db, "/api/credits/", 7)

    balance = client.get("/api/credits/").json()["credits"]

    assert balance == FREE_PLAN_CREDITS - 7
    [charge, _grant] = client.get("/api/credits/transactions/").json()
    assert (charge["amount"], charge["endpoint"]) == (-7, "/api/credits/")
    assert charge["description"] == "API request to /api/credits/"
    assert charge["balance_after"] == FREE_PLAN_CREDITS - 7


def test_an_inactive_rate_charges_nothing(client: ApiClient, db: Database) -> None:
    add_rate(db, "/api/credits/", 7, active=False)
    assert client.get("/api/credits/").json()["credits"] == FREE_PLAN_CREDITS


def test_a_request_the_balance_does_not_cover_is_403_and_records_nothing(
    client: ApiClient, db: Database, clock: Clock
) -> None:
    client.get("/api/credits/")  # the account opens with the plan's grant
    add_rate(db, "/api/users/me/", FREE_PLAN_CREDITS + 1)
    set_daily_limit(db, "free", 4)
    movements = len(client.get("/api/credits/transactions/").json())

    refused = [client.get("/api/users/me/") for _ in range(3)]

    assert {r.status_code for r in refused} == {403}
    body = refused[0].json()
    assert (body["detail"], body["code"]) == (CREDITS_DETAIL, "INSUFFICIENT_CREDITS")
    assert len(client.get("/api/credits/transactions/").json()) == movements
    # The day's four requests are the four above that were answered; the refusals used none.
    assert client.get("/api/credits/").status_code == 200
    assert client.get("/api/credits/").status_code == 429
