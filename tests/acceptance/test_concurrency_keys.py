"""Concurrency keys and priority through the API with three worker processes: a tenant with
hundreds of runs queued cannot starve another, a key never has more runs in flight than its
limit, held runs are not re-enqueued in a loop, and priority is honoured."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import tests.workflows_for_tests  # noqa: F401 - registers stubborn_sleep
from conveyor.db import Database
from conveyor.runs.dispatch import Hold, dispatch_runs
from conveyor.settings import Settings
from tests.support import ApiClient, new_run, wait_for_run, wait_until, worker_subprocess

LIMIT = 4
A_RUNS = 400
B_RUNS = 10
# Each run is one python step sleeping this long.
NAP = 0.1
# B's runs all start within this many seconds of B's submit: a few run durations plus the
# dispatch hops, far less than A's backlog needs (A_RUNS / LIMIT * NAP = 10 s at best).
B_START_BOUND = 5.0
WINDOW = 16
SETTINGS = {"dispatch_window": WINDOW}


@pytest.fixture
def three_workers(settings: Settings) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Three worker processes on the runs queue, one task at a time each."""
    with (
        worker_subprocess(settings, "runs") as first,
        worker_subprocess(settings, "runs") as second,
        worker_subprocess(settings, "runs") as third,
    ):
        yield [first, second, third]


def generous_plan(db: Database, user: uuid.UUID) -> None:
    """An account on a plan admitting thousands of runs at once, with credits for them
    (admission is not under test)."""
    plan = f"p{user.hex[:12]}"
    with db.transaction() as conn:
        conn.execute(
            "insert into plans (id, name, monthly_token_quota, monthly_cost_quota_micro_usd, "
            "daily_request_limit, max_concurrent_runs, monthly_credit_grant) "
            "values (%s, 'test', 1000000000, 1000000000000, 100000, 100000, 0)",
            (plan,),
        )
        conn.execute(
            "insert into user_accounts (user_id, plan_id, credit_balance) values (%s, %s, 100000)",
            (user, plan),
        )


def submit(client: ApiClient, **flow: Any) -> str:
    """Start a short run asynchronously with the given concurrency/priority; its id."""
    response = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "stubborn_sleep", "inputs": {"seconds": NAP}, "async": True, **flow},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["workflow_run_id"])


class Sampler:
    """Samples, until stopped, the most runs in flight per key and the broker's runs queue."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db, self.redis = db, redis.Redis.from_url(str(settings.redis_url))
        self.in_flight: dict[str, int] = {}
        self.queue_length = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            with self.db.transaction() as conn:
                rows = conn.execute(
                    "select concurrency_key as key, count(*) as n from workflow_runs "
                    "where concurrency_key is not null and dispatched_at is not null "
                    "and status in ('queued', 'running', 'waiting') group by concurrency_key"
                ).fetchall()
            for row in rows:
                self.in_flight[row["key"]] = max(self.in_flight.get(row["key"], 0), row["n"])
            self.queue_length = max(self.queue_length, int(self.redis.llen("runs")))
            time.sleep(0.02)


@pytest.fixture
def tenant(db: Database, make_client: Callable[..., ApiClient]) -> ApiClient:
    """A client for a user on a generous plan."""
    user = uuid.uuid4()
    generous_plan(db, user)
    return make_client(user)


@pytest.fixture
def sampler(db: Database, settings: Settings) -> Iterator[Sampler]:
    sampling = Sampler(db, settings)
    sampling.thread.start()
    yield sampling
    sampling.stop.set()
    sampling.thread.join(timeout=5)


def started_at(db: Database, run_ids: list[str]) -> dict[str, Any]:
    with db.transaction() as conn:
        rows = conn.execute(
            "select id::text, started_at from workflow_runs where id = any(%s::uuid[])",
            (run_ids,),
        ).fetchall()
    return {row["id"]: row["started_at"] for row in rows}


def held_count(db: Database, key: str) -> int:
    with db.transaction() as conn:
        row = conn.execute(
            "select count(*) as n from workflow_runs where concurrency_key = %s "
            "and status = 'queued' and dispatched_at is null",
            (key,),
        ).fetchone()
    assert row is not None
    return int(row["n"])


def test_tenant_b_starts_while_tenant_a_has_hundreds_queued(
    three_workers: list[subprocess.Popen[bytes]],
    db: Database,
    celery_app: Any,
    make_client: Callable[..., ApiClient],
    sampler: Sampler,
) -> None:
    tenant_a, tenant_b = uuid.uuid4(), uuid.uuid4()
    generous_plan(db, tenant_b)
    # A's backlog stored as a submit stores it (400 HTTP calls would only slow the test down),
    # keyed as `{{ user_id }}` renders.
    for _ in range(A_RUNS):
        new_run(db, "stubborn_sleep", {"seconds": NAP}, user_id=tenant_a,
                hold=Hold(str(tenant_a), LIMIT, None))  # fmt: skip
    for run_id in dispatch_runs(db, WINDOW):
        celery_app.send_task("runs.execute", args=[str(run_id)], queue="runs")
    wait_until(lambda: held_count(db, str(tenant_a)) < A_RUNS - 2 * LIMIT, 30, "A's runs going")

    client_b = make_client(tenant_b)
    submitted = time.monotonic()
    b_runs = [
        submit(client_b, concurrency={"key": "tenant", "limit": LIMIT}) for _ in range(B_RUNS)
    ]
    wait_until(lambda: all(started_at(db, b_runs).values()), B_START_BOUND, "B's runs starting")
    elapsed = time.monotonic() - submitted

    assert held_count(db, str(tenant_a)) >= 100, "A's backlog ran out: the test proves nothing"
    assert elapsed <= B_START_BOUND
    assert [wait_for_run(client_b, run_id, timeout=30)["status"] for run_id in b_runs] == [
        "completed"
    ] * B_RUNS
    assert sampler.in_flight[str(tenant_a)] <= LIMIT
    # A key a user gives in the body is scoped to them.
    assert sampler.in_flight[f"user:{tenant_b}:tenant"] <= LIMIT


def test_held_runs_are_not_re_enqueued_in_a_loop(
    three_workers: list[subprocess.Popen[bytes]],
    tenant: ApiClient,
    db: Database,
    sampler: Sampler,
) -> None:
    run_ids = [submit(tenant, concurrency={"key": "one-key", "limit": 1}) for _ in range(30)]

    views = [wait_for_run(tenant, run_id, timeout=60) for run_id in run_ids]

    assert {view["status"] for view in views} == {"completed"}
    # The key a user gives is scoped to them: user:<id>:one-key.
    assert [n for key, n in sampler.in_flight.items() if key.endswith(":one-key")] == [1]
    # Only dispatched runs reach the broker: never more than the window.
    assert sampler.queue_length <= WINDOW


def test_a_later_higher_priority_run_starts_first_within_a_key(
    db: Database, tenant: ApiClient, settings: Settings
) -> None:
    # No worker yet: the first run takes the key's only slot, the rest wait held.
    blocker = submit(tenant, concurrency={"key": "k", "limit": 1})
    low = [submit(tenant, concurrency={"key": "k", "limit": 1}, priority=1) for _ in range(3)]
    high = submit(tenant, concurrency={"key": "k", "limit": 1}, priority=9)
    with worker_subprocess(settings, "runs"):
        for run_id in [blocker, *low, high]:
            wait_for_run(tenant, run_id, timeout=30)

    order = started_at(db, [blocker, *low, high])
    assert order[blocker] < order[high] < min(order[run_id] for run_id in low)


def test_a_higher_priority_run_of_another_key_starts_first(
    db: Database, tenant: ApiClient, settings: Settings
) -> None:
    low = [submit(tenant, concurrency={"key": f"low-{n}", "limit": 1}, priority=0)
           for n in range(WINDOW + 4)]  # fmt: skip
    high = submit(tenant, concurrency={"key": "urgent", "limit": 1}, priority=9)
    with worker_subprocess(settings, "runs"):
        for run_id in [*low, high]:
            wait_for_run(tenant, run_id, timeout=60)

    order = started_at(db, [*low, high])
    # The window was full of low runs when it came: it went out next, before the held rest.
    assert order[high] < min(order[run_id] for run_id in low[WINDOW:])


def test_cancelling_a_queued_keyed_run_dispatches_the_next_at_once(
    client: ApiClient, db: Database
) -> None:
    first = submit(client, concurrency={"key": "cancel-me", "limit": 1})
    second = submit(client, concurrency={"key": "cancel-me", "limit": 1})

    cancelled = client.post(f"/api/runs/{first}/cancel")

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    with db.transaction() as conn:
        row = conn.execute(
            "select dispatched_at from workflow_runs where id = %s", (second,)
        ).fetchone()
    assert row is not None
    assert row["dispatched_at"] is not None
