"""`POST /api/usage`: backends report usage with a service token; a worker records each batch
once, even when it is killed mid-batch and the message is delivered again."""

from __future__ import annotations

import random
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from conveyor import ledger
from conveyor.auth.tokens import mint_service_token
from conveyor.db import Database, sql_connection
from conveyor.settings import Settings
from tests.support import (
    API_SECRET,
    ApiClient,
    close_worker_resources,
    wait_until,
    worker_subprocess,
)

# kombu's Redis transport keeps a fetched, unacknowledged message in these two keys until it is
# acknowledged; it puts it back on its queue once it is older than the visibility timeout.
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
# The second worker's visibility timeout: production keeps an hour (worker/celery_app.py), so a
# message whose worker died is redelivered an hour later; the test cannot wait that long.
SHORT_VISIBILITY_SECONDS = 1

ClientFactory = Callable[..., ApiClient]


def usage_event(user: uuid.UUID, key: str, **fields: Any) -> dict[str, Any]:
    return {
        "user_id": str(user),
        "idempotency_key": key,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "prompt_tokens": 100,
        "completion_tokens": 20,
        **fields,
    }


def stored_events(database_url: str) -> int:
    with sql_connection(database_url) as conn:
        row = conn.execute("select count(*) from usage_events").fetchone()
    return int(row[0]) if row else 0


def stored_batches(database_url: str) -> int:
    """Accepted batches not yet recorded (the outbox rows)."""
    with sql_connection(database_url) as conn:
        row = conn.execute("select count(*) from usage_batches").fetchone()
    return int(row[0]) if row else 0


def test_a_batch_from_a_service_token_is_accepted_and_recorded_by_the_worker(
    service: ApiClient, worker: object, database_url: str
) -> None:
    user = uuid.uuid4()
    events = [usage_event(user, f"k{i}") for i in range(3)]

    response = service.post("/api/usage", json={"events": events})

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 3}
    wait_until(lambda: stored_events(database_url) == 3, 15, "the worker recording the batch")


def test_a_single_event_is_accepted_without_a_batch_around_it(
    service: ApiClient, worker: object, database_url: str
) -> None:
    response = service.post("/api/usage", json=usage_event(uuid.uuid4(), "alone"))

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1}
    wait_until(lambda: stored_events(database_url) == 1, 15, "the worker recording the event")


def test_a_user_token_is_refused(client: ApiClient, user_id: uuid.UUID) -> None:
    response = client.post("/api/usage", json={"events": [usage_event(user_id, "mine")]})

    assert response.status_code == 403
    assert response.json()["code"] == "FORBIDDEN"


def test_a_service_token_without_the_usage_scope_is_refused(make_client: ClientFactory) -> None:
    other = make_client(token=mint_service_token("billing", ["runs:read"], secret=API_SECRET))

    response = other.post("/api/usage", json={"events": [usage_event(uuid.uuid4(), "k")]})

    assert response.status_code == 403
    assert "usage:write" in response.json()["error"]


def test_an_invalid_event_is_refused_naming_its_field(service: ApiClient) -> None:
    events = [usage_event(uuid.uuid4(), "ok"), usage_event(uuid.uuid4(), "bad", prompt_tokens=-1)]

    response = service.post("/api/usage", json={"events": events})

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "INVALID_INPUT"
    assert [f["field"] for f in body["details"]["fields"]] == ["events.1.prompt_tokens"]


def test_more_than_1000_events_are_refused(service: ApiClient) -> None:
    user = uuid.uuid4()
    events = [usage_event(user, f"k{i}") for i in range(1001)]

    response = service.post("/api/usage", json={"events": events})

    assert response.status_code == 400
    fields = response.json()["details"]["fields"]
    assert [f["field"] for f in fields] == ["events"]
    assert "1000" in fields[0]["problem"]


# A worker killed mid-batch.


@pytest.fixture
def worker_process(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker in its own process, as in production, consuming the usage queue."""
    with worker_subprocess(settings, "usage") as process:
        yield process


@pytest.fixture
def redelivering_worker(celery_app: Celery) -> Iterator[Callable[[], object]]:
    """Starts (when called) a second worker, on every queue, whose transport puts back messages
    left unacknowledged for SHORT_VISIBILITY_SECONDS: kombu's own redelivery, sooner."""
    started: list[Any] = []

    def start() -> object:
        celery_app.conf.broker_transport_options = {
            **celery_app.conf.broker_transport_options,
            "visibility_timeout": SHORT_VISIBILITY_SECONDS,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
        context = start_worker(
            celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=20,
            loglevel="WARNING",
        )  # fmt: skip
        started.append(context)
        return context.__enter__()

    yield start
    for context in started:
        context.__exit__(None, None, None)
    close_worker_resources(celery_app)


def big_batch(db: Database, users: list[uuid.UUID]) -> list[dict[str, Any]]:
    """1,000 events over users who each bought 10,000 credits; each event asks for 0-3 credits."""
    for user in users:
        ledger.add_credits(db, user, 10_000, kind="purchase", reference=f"seed:{user}")
        ledger.remaining_quota(db, user)  # opens this month's usage period
    return [
        usage_event(
            random.choice(users),
            f"big-{i}",
            prompt_tokens=random.randint(1, 4000),
            completion_tokens=random.randint(1, 4000),
            input_cost_micro_usd=random.randint(0, 500),
            output_cost_micro_usd=random.randint(0, 500),
            credits=random.randint(0, 3),
        )
        for i in range(1000)
    ]


def ledger_state(database_url: str, users: list[uuid.UUID]) -> dict[str, Any]:
    """What the ledger holds for users: events, period totals, balances."""
    with sql_connection(database_url) as conn:
        events = conn.execute(
            "select count(*) from usage_events where user_id = any(%s)", (users,)
        ).fetchone()
        periods = conn.execute(
            "select sum(tokens_used), sum(cost_used_micro_usd), sum(requests_used) "
            "from usage_periods where user_id = any(%s)",
            (users,),
        ).fetchone()
        balance = conn.execute(
            "select sum(credit_balance) from user_accounts where user_id = any(%s)", (users,)
        ).fetchone()
    assert events is not None
    assert periods is not None
    assert balance is not None
    return {
        "events": events[0],
        "tokens": periods[0],
        "cost": periods[1],
        "requests": periods[2],
        "balance": balance[0],
    }


def expected_state(events: list[dict[str, Any]], start_balance: int) -> dict[str, Any]:
    """The same figures summed here, each event counted once."""
    return {
        "events": len(events),
        "tokens": sum(e["prompt_tokens"] + e["completion_tokens"] for e in events),
        "cost": sum(e["input_cost_micro_usd"] + e["output_cost_micro_usd"] for e in events),
        "requests": len(events),
        "balance": start_balance - sum(e["credits"] for e in events),
    }


def lock_period(database_url: str, user: uuid.UUID) -> psycopg.Connection[Any]:
    """A connection holding user's usage period row locked: a batch that includes user stops
    there, its events inserted but not committed."""
    conn = sql_connection(database_url)
    conn.execute("select 1 from usage_periods where user_id = %s for update", (user,))
    return conn


def blocked_batch_backend(database_url: str) -> int | None:
    """The server process of a record_usage_batch call waiting for a lock, if any."""
    with sql_connection(database_url, autocommit=True) as conn:
        row = conn.execute(
            "select pid from pg_stat_activity where wait_event_type = 'Lock' "
            "and query like %s and datname = current_database()",
            ("%record_usage_batch%",),
        ).fetchone()
    return int(row[0]) if row else None


def backend_alive(database_url: str, pid: int) -> bool:
    with sql_connection(database_url, autocommit=True) as conn:
        row = conn.execute("select 1 from pg_stat_activity where pid = %s", (pid,)).fetchone()
    return row is not None


@pytest.mark.timeout(120)
def test_a_worker_killed_mid_transaction_loses_nothing_after_redelivery(
    service: ApiClient,
    worker_process: subprocess.Popen[bytes],
    redelivering_worker: Callable[[], object],
    usage_results: list[Any],
    db: Database,
    database_url: str,
    clean_redis: redis.Redis,
) -> None:
    """SIGKILL while the batch's transaction is open: it rolls back, and the redelivered message
    records all 1,000 events once."""
    users = [uuid.uuid4() for _ in range(4)]
    events = big_batch(db, users)
    start_balance = ledger_state(database_url, users)["balance"]
    held = lock_period(database_url, min(users))
    try:
        assert service.post("/api/usage", json={"events": events}).status_code == 202
        wait_until(lambda: blocked_batch_backend(database_url), 30, "the worker starting the batch")
        pid = blocked_batch_backend(database_url)
        assert pid is not None
        assert clean_redis.hlen(UNACKED) == 1  # fetched, not acknowledged

        worker_process.send_signal(signal.SIGKILL)
        worker_process.wait(timeout=10)
    finally:
        held.rollback()
        held.close()
    # The orphaned transaction fails when it next talks to its dead client; nothing is committed.
    wait_until(lambda: not backend_alive(database_url, pid), 30, "the orphaned transaction ending")
    assert ledger_state(database_url, users)["events"] == 0

    redelivering_worker()
    wait_until(lambda: usage_results, 30, "the message being redelivered and run")

    assert usage_results[0]["recorded"] == len(events)
    assert ledger_state(database_url, users) == expected_state(events, start_balance)
    wait_until(lambda: clean_redis.hlen(UNACKED) == 0, 10, "the message being acknowledged")


@pytest.mark.timeout(120)
def test_a_worker_killed_after_commit_before_ack_double_counts_nothing(
    service: ApiClient,
    worker_process: subprocess.Popen[bytes],
    redelivering_worker: Callable[[], object],
    usage_results: list[Any],
    db: Database,
    database_url: str,
    clean_redis: redis.Redis,
) -> None:
    """SIGKILL after the batch committed but before the message was acknowledged: the message is
    delivered again and finds its batch recorded (the row went with the commit)."""
    users = [uuid.uuid4() for _ in range(4)]
    events = big_batch(db, users)
    start_balance = ledger_state(database_url, users)["balance"]
    held = lock_period(database_url, min(users))
    try:
        assert service.post("/api/usage", json={"events": events}).status_code == 202
        wait_until(lambda: blocked_batch_backend(database_url), 30, "the worker starting the batch")
        # Redis refuses writes for a while: the worker can commit but not acknowledge.
        clean_redis.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
    finally:
        held.rollback()
        held.close()
    try:
        wait_until(
            lambda: ledger_state(database_url, users)["events"] == len(events),
            30,
            "the batch committing",
        )
        worker_process.send_signal(signal.SIGKILL)
        worker_process.wait(timeout=10)
    finally:
        clean_redis.execute_command("CLIENT", "UNPAUSE")
    assert clean_redis.hlen(UNACKED) == 1  # committed, never acknowledged
    recorded_once = ledger_state(database_url, users)

    redelivering_worker()
    wait_until(lambda: usage_results, 30, "the message being redelivered and run")

    assert recorded_once == expected_state(events, start_balance)
    assert usage_results[0] == {"already_recorded": 1}
    assert ledger_state(database_url, users) == recorded_once
    wait_until(lambda: clean_redis.hlen(UNACKED) == 0, 10, "the message being acknowledged")
