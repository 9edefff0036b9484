"""The caller's own usage over HTTP: quota left this month, an activity summary, and the usage
events themselves, newest first a page at a time; nobody sees anyone else's."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from conveyor.auth.tokens import mint_service_token
from conveyor.db import Database
from conveyor.ledger.balances import UsageRecord, record_usage
from tests.support import API_SECRET, ApiClient

ClientFactory = Callable[..., ApiClient]


def seed(db: Database, user_id: uuid.UUID, **fields: Any) -> int:
    """Record one usage event for user_id; returns its id."""
    values: dict[str, Any] = {
        "idempotency_key": uuid.uuid4().hex,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "input_cost_micro_usd": 10,
        "output_cost_micro_usd": 20,
        **fields,
    }
    with db.transaction() as conn:
        return record_usage(conn, user_id, UsageRecord(**values)).event_id


def next_month_start(now: datetime) -> datetime:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


def test_quota_reports_limits_used_and_remaining(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    """The free plan's limits, this month's use and what remains, per kind of limit."""
    seed(db, user_id, prompt_tokens=1000, completion_tokens=500)
    response = client.get("/api/user/quota")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["plan_id"] == "free"
    assert body["limits"] == {
        "tokens": 200000,
        "cost_micro_usd": 2000000,
        "daily_requests": 200,
        "concurrent_runs": 5,
    }
    assert body["used"] == {
        "tokens": 1500,
        "cost_micro_usd": 30,
        "daily_requests": 0,
        "concurrent_runs": 0,
    }
    assert body["remaining"] == {
        "tokens": 198500,
        "cost_micro_usd": 1999970,
        "daily_requests": 200,
        "concurrent_runs": 5,
    }
    assert body["credits"] == 100


def test_quota_reset_times_are_iso_timestamps_in_utc(client: ApiClient) -> None:
    """The month resets at the start of next month, requests at the next UTC midnight."""
    body = client.get("/api/user/quota").json()
    now = datetime.now(UTC)
    assert datetime.fromisoformat(body["resets_at"]) == next_month_start(now)
    assert body["period_start"] == now.replace(day=1).date().isoformat()
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert datetime.fromisoformat(body["daily_resets_at"]) == tomorrow


def test_usage_summary_totals_requests_by_model(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    """Totals and per-model figures add up the caller's events."""
    seed(db, user_id, model="gpt-4o-mini")
    seed(db, user_id, model="gpt-4o-mini", success=False, error="timeout")
    seed(db, user_id, model="gpt-4o", prompt_tokens=7, completion_tokens=3)
    response = client.get("/api/user/usage-summary?days=30")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["days"] == 30
    assert body["totals"] == {
        "requests": 3,
        "prompt_tokens": 207,
        "completion_tokens": 103,
        "cost_micro_usd": 90,
        "failed": 1,
    }
    assert [(m["model"], m["requests"], m["tokens"]) for m in body["by_model"]] == [
        ("gpt-4o", 1, 10),
        ("gpt-4o-mini", 2, 300),
    ]
    assert sum(d["requests"] for d in body["by_day"]) == 3


def test_usage_summary_leaves_out_events_older_than_days(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    """An event 10 days old counts for days=30 but not for days=5."""
    seed(db, user_id, occurred_at=datetime.now(UTC) - timedelta(days=10))
    seed(db, user_id)
    assert client.get("/api/user/usage-summary?days=30").json()["totals"]["requests"] == 2
    assert client.get("/api/user/usage-summary?days=5").json()["totals"]["requests"] == 1


def test_usage_summary_defaults_to_30_days(client: ApiClient) -> None:
    """Without `days` the summary covers 30 days."""
    body = client.get("/api/user/usage-summary").json()
    assert body["days"] == 30
    assert body["totals"]["requests"] == 0


def test_usage_summary_days_outside_1_to_366_is_400_naming_days(client: ApiClient) -> None:
    """0, 367 and a non-number are refused with INVALID_INPUT naming `days`."""
    for days in ("0", "367", "abc"):
        response = client.get(f"/api/user/usage-summary?days={days}")
        assert response.status_code == 400, days
        body = response.json()
        assert body["code"] == "INVALID_INPUT"
        assert [f["field"] for f in body["details"]["fields"]] == ["days"]


def test_usage_events_are_listed_newest_first_with_a_cursor(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    """Three events come back newest first, two and then one, and the last page has no cursor."""
    now = datetime.now(UTC)
    ids = [seed(db, user_id, occurred_at=now - timedelta(minutes=m)) for m in (3, 2, 1)]
    first = client.get("/api/usage/events?limit=2").json()
    assert [e["id"] for e in first["events"]] == ids[::-1][:2]
    second = client.get(f"/api/usage/events?limit=2&cursor={first['next_cursor']}").json()
    assert [e["id"] for e in second["events"]] == [ids[0]]
    assert second["next_cursor"] is None


def test_usage_events_at_the_same_instant_are_paged_without_gaps_or_repeats(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    """Events sharing an occurred_at are ordered by id, so paging one at a time visits each once."""
    at = datetime.now(UTC)
    ids = [seed(db, user_id, occurred_at=at) for _ in range(3)]
    seen: list[int] = []
    cursor = ""
    for _ in range(5):
        page = client.get(f"/api/usage/events?limit=1&cursor={cursor}").json()
        seen += [e["id"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    assert seen == sorted(ids, reverse=True)


def test_a_usage_event_shows_its_figures(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    """The listing carries the event's provider, model, tokens, cost and timestamps (ISO)."""
    run_id = uuid.uuid4()
    seed(db, user_id, idempotency_key="k-1", agent_mode="chat", latency_ms=42, run_id=run_id)
    (event,) = client.get("/api/usage/events").json()["events"]
    assert event["idempotency_key"] == "k-1"
    assert (event["provider"], event["model"], event["agent_mode"]) == (
        "openai",
        "gpt-4o-mini",
        "chat",
    )
    assert (event["prompt_tokens"], event["completion_tokens"]) == (100, 50)
    assert (event["input_cost_micro_usd"], event["output_cost_micro_usd"]) == (10, 20)
    assert (event["latency_ms"], event["run_id"], event["success"]) == (42, str(run_id), True)
    assert datetime.fromisoformat(event["occurred_at"]).tzinfo is not None


def test_usage_events_of_other_users_are_not_listed(
    client: ApiClient, make_client: ClientFactory, db: Database, user_id: uuid.UUID
) -> None:
    """A stranger's events stay out of the caller's listing, and the caller's out of theirs."""
    stranger_id = uuid.uuid4()
    seed(db, stranger_id)
    mine = seed(db, user_id)
    assert [e["id"] for e in client.get("/api/usage/events").json()["events"]] == [mine]
    stranger = make_client(stranger_id)
    assert mine not in [e["id"] for e in stranger.get("/api/usage/events").json()["events"]]


def test_usage_events_with_a_forged_cursor_is_400(client: ApiClient) -> None:
    """A cursor this API did not return is INVALID_INPUT, not a 500."""
    response = client.get("/api/usage/events?cursor=not-a-cursor")
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_INPUT"


def test_usage_endpoints_refuse_service_tokens(make_client: ClientFactory) -> None:
    """Usage views act for a user: a service token gets 403 FORBIDDEN."""
    service = make_client(token=mint_service_token("billing", ["usage:write"], secret=API_SECRET))
    for path in ("/api/user/quota", "/api/user/usage-summary", "/api/usage/events"):
        response = service.get(path)
        assert (response.status_code, response.json()["code"]) == (403, "FORBIDDEN"), path
