"""The operators' endpoints behind the dashboard: queues and workers, everyone's runs, run counts,
quota per plan, and the dashboard page itself."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from conveyor.cli.services import free_port
from conveyor.constants import QUEUES
from conveyor.db import Database
from conveyor.ledger.balances import check_and_consume_quota
from conveyor.runs.dispatch import Hold, dispatch_runs
from tests.support import (
    ApiClient,
    LiveServer,
    close_worker_resources,
    make_settings,
    new_run,
    token_for,
)

ADMIN_ENDPOINTS = [
    "/api/admin/queues",
    "/api/admin/runs",
    "/api/admin/run-stats",
    "/api/admin/quota-usage",
    "/api/admin/flow",
]


def submit_echo(client: ApiClient, n: int = 1) -> str:
    """Submit a run of the built-in echo agent; its id."""
    response = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {"n": n}})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["request_id"]
    return run_id


def poll(fetch: Callable[[], Any], until: Callable[[Any], bool], timeout: float = 10) -> Any:
    """fetch() until until(value) holds; fail with the last value after timeout seconds."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not until(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met after {timeout} s: {value}")
        time.sleep(0.1)
        value = fetch()
    return value


@pytest.mark.parametrize("path", ADMIN_ENDPOINTS)
def test_admin_endpoints_refuse_users_and_anonymous_callers(
    path: str, client: ApiClient, anonymous: ApiClient
) -> None:
    """A user's token is 403 FORBIDDEN, no token is 401, both as JSON errors."""
    refused = client.get(path)
    assert refused.status_code == 403
    assert refused.json()["code"] == "FORBIDDEN"
    assert anonymous.get(path).status_code == 401


def test_queues_count_waiting_messages_per_queue(admin: ApiClient, client: ApiClient) -> None:
    """With no worker running, each submitted run waits in the `runs` queue."""
    submit_echo(client, 1)
    submit_echo(client, 2)

    body = admin.get("/api/admin/queues").json()

    assert [q["name"] for q in body["queues"]] == list(QUEUES)
    depths = {q["name"]: q["depth"] for q in body["queues"]}
    assert depths == {"runs": 2, "usage": 0, "webhooks": 0, "maintenance": 0}
    assert body["broker"] == "redis"
    assert body["unacked"] == 0
    assert body["workers"] == []


def test_a_running_worker_is_listed_and_leaves_the_list_when_it_stops(
    admin: ApiClient, celery_app: Celery
) -> None:
    """A worker writes its heartbeat as it starts and removes it when it stops cleanly."""
    with start_worker(celery_app, pool="solo", perform_ping_check=False, loglevel="WARNING") as w:
        body = admin.get("/api/admin/queues").json()
        [listed] = body["workers"]
        assert listed["hostname"] == w.hostname
        assert set(listed["queues"]) == set(QUEUES)
        assert listed["concurrency"] >= 1
        age = datetime.now(UTC) - datetime.fromisoformat(listed["seen_at"])
        assert age.total_seconds() < 10
    close_worker_resources(celery_app)

    assert admin.get("/api/admin/queues").json()["workers"] == []


def test_a_worker_counts_the_tasks_it_processed(
    admin: ApiClient, client: ApiClient, worker: Any
) -> None:
    """The heartbeat carries the worker's processed count; the queue drains."""
    before = admin.get("/api/admin/queues").json()["workers"][0]["processed"]
    submit_echo(client)

    def fetch() -> dict[str, Any]:
        body: dict[str, Any] = admin.get("/api/admin/queues").json()
        return body

    # The heartbeat is rewritten every few seconds, so the count shows within one period.
    body = poll(fetch, lambda b: b["workers"][0]["processed"] > before, timeout=15)
    assert {q["name"]: q["depth"] for q in body["queues"]}["runs"] == 0


def test_queues_answer_503_when_redis_is_unreachable(database_url: str, tmp_path: Path) -> None:
    """Without Redis the endpoint says so with SERVICE_UNAVAILABLE instead of hanging."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with LiveServer(make_settings(database_url, dead, tmp_path / "data")) as server:
        admin = ApiClient(server.url, token_for(uuid.uuid4(), admin=True))
        started = time.monotonic()
        response = admin.get("/api/admin/queues")
    assert response.status_code == 503
    assert response.json()["code"] == "SERVICE_UNAVAILABLE"
    assert time.monotonic() - started < 5


def test_admins_list_everyones_runs_newest_first_with_their_owner(
    admin: ApiClient, make_client: Callable[..., ApiClient]
) -> None:
    """Runs of two users come back in one listing, newest first, each naming its user."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    first = submit_echo(make_client(alice))
    second = submit_echo(make_client(bob))

    runs = admin.get("/api/admin/runs").json()["runs"]

    assert [(r["id"], r["user_id"]) for r in runs] == [(second, str(bob)), (first, str(alice))]
    assert runs[0]["status"] == "queued"
    assert runs[0]["last_event_seq"] >= 1


def test_admin_runs_filter_and_page(
    admin: ApiClient, make_client: Callable[..., ApiClient]
) -> None:
    """status, user_id and cursor narrow the listing; pages do not overlap."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    alices = [submit_echo(make_client(alice), n) for n in range(3)]
    bobs = submit_echo(make_client(bob))
    cancelled = make_client(bob).post(f"/api/runs/{bobs}/cancel")
    assert cancelled.status_code == 200, cancelled.text

    only_alice = admin.get("/api/admin/runs", params={"user_id": str(alice)}).json()["runs"]
    assert [r["id"] for r in only_alice] == alices[::-1]
    only_cancelled = admin.get("/api/admin/runs", params={"status": "cancelled"}).json()["runs"]
    assert [r["id"] for r in only_cancelled] == [bobs]

    page1 = admin.get("/api/admin/runs", params={"limit": 2}).json()
    page2 = admin.get("/api/admin/runs", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
    seen = [r["id"] for r in page1["runs"] + page2["runs"]]
    assert seen == [bobs, *alices[::-1]]
    assert page2["next_cursor"] is None


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/api/admin/runs", {"status": "lost"}, "status"),
        ("/api/admin/runs", {"limit": 0}, "limit"),
        ("/api/admin/runs", {"user_id": "nobody"}, "user_id"),
        ("/api/admin/runs", {"cursor": "not-a-cursor"}, "cursor"),
        ("/api/admin/runs", {"colour": "red"}, "colour"),
        ("/api/admin/run-stats", {"hours": 0}, "hours"),
        ("/api/admin/run-stats", {"hours": "a day"}, "hours"),
        ("/api/admin/quota-usage", {"month": "2026-11"}, "month"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    admin: ApiClient, path: str, params: dict[str, Any], named: str
) -> None:
    """Every query parameter is validated; unknown ones are refused, not ignored."""
    response = admin.get(path, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_INPUT"
    assert named in response.json()["error"]


def test_run_stats_count_runs_by_status(admin: ApiClient, client: ApiClient) -> None:
    """Created runs are counted per status (all six present), unfinished ones apart."""
    kept = submit_echo(client, 1)
    dropped = submit_echo(client, 2)
    assert client.post(f"/api/runs/{dropped}/cancel").status_code == 200

    body = admin.get("/api/admin/run-stats", params={"hours": 1}).json()

    assert body["hours"] == 1
    assert body["created"] == {
        "queued": 1,
        "running": 0,
        "waiting": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 1,
    }
    assert body["unfinished"] == {"queued": 1, "running": 0, "waiting": 0}
    assert kept


def test_quota_usage_sums_this_months_use_per_plan(admin: ApiClient, db: Database) -> None:
    """Per plan: how many users, how many tokens of their quota they used, who is near or at
    the limit."""
    heavy, light, paying = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert check_and_consume_quota(db, heavy, 170_000, 1_000)  # 85 % of the free 200,000
    assert check_and_consume_quota(db, light, 1_000, 10)
    with db.transaction() as conn:
        conn.execute(
            "insert into conveyor.user_accounts (user_id, plan_id) values (%s, 'basic')", (paying,)
        )

    plans = {p["plan_id"]: p for p in admin.get("/api/admin/quota-usage").json()["plans"]}

    assert list(plans) == ["free", "basic", "premium", "enterprise"]
    free = plans["free"]
    assert (free["users"], free["active_users"]) == (2, 2)
    assert (free["tokens_used"], free["token_quota"]) == (171_000, 400_000)
    assert (free["users_over_80_percent"], free["users_at_quota"]) == (1, 0)
    assert free["cost_used_micro_usd"] == 1_010
    basic = plans["basic"]
    assert (basic["users"], basic["active_users"], basic["tokens_used"]) == (1, 0, 0)
    assert plans["premium"]["users"] == 0


def test_flow_lists_held_runs_by_key_with_its_limit_and_runs_in_flight(
    admin: ApiClient, db: Database
) -> None:
    key = f"tenant-{uuid.uuid4()}"
    for _ in range(3):
        new_run(db, hold=Hold(key, 1))
    dispatch_runs(db, 16)

    body = admin.get("/api/admin/flow").json()

    assert {"key": key, "held": 2, "limit": 1, "in_flight": 1} in body["queued_by_key"]
    assert body["runs_waiting"]["concurrency"] >= 2
    assert isinstance(body["rate_limits"], list)
    assert isinstance(body["reservations"], list)


def test_the_dashboard_page_and_its_assets_are_served_without_a_token(
    anonymous: ApiClient,
) -> None:
    """`/` is the dashboard (no data in it), with a CSP that allows only our own script."""
    page = anonymous.get("/")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert '<script src="/static/dashboard/dashboard.js"' in page.text

    script = anonymous.get("/static/dashboard/dashboard.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["Content-Type"]
    assert "/api/ws/workflows" in script.text
    assert anonymous.get("/static/dashboard/dashboard.css").status_code == 200
    assert anonymous.get("/static/dashboard/missing.js").status_code == 404
