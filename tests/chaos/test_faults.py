"""Under a steady stream of workflow submits, usage batches and Stripe webhooks, each fault in
turn: every accepted run ends final, every accepted usage event and webhook is applied exactly
once, the API answers 503 (never 500) while a dependency is down, and the system recovers by
itself. `make chaos` runs these and prints the table."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
import requests

from tests.chaos.check import wait_settled
from tests.chaos.load import Load, probe_recovery
from tests.chaos.report import RESULTS, Row, table
from tests.chaos.system import System
from tests.support import token_for, wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

SIGNED_IN = {"Authorization": f"Bearer {token_for(uuid.uuid4())}"}  # not rate-limited per IP

WARM_SECONDS = 3.0  # load before the fault
DOWN_SECONDS = 4.0  # how long a restarted dependency stays down
AFTER_SECONDS = 3.0  # load after recovery
SETTLE_SECONDS = 90.0  # bound on waiting for everything accepted to be applied
SLOT_SECONDS = 30  # the requeue jobs' cadence (conveyor.ops.jobs.JOBS): an outage must span one
SLOT_LEAD_SECONDS = 1.5  # a dependency goes down this long before the slot starts


def before_the_next_slot() -> None:
    """Sleep until SLOT_LEAD_SECONDS before the next 30 s slot, so that the outage that follows
    covers the moment beat publishes the requeue jobs (a beat that cannot survive that dies)."""
    wait = (SLOT_SECONDS - SLOT_LEAD_SECONDS - time.time() % SLOT_SECONDS) % SLOT_SECONDS
    time.sleep(wait)


def inflict(system: System, fault: str, inject: Callable[[], float], note: str = "") -> Row:
    """Load, fault (inject() returns when it ended), a probe for recovery, more load, then wait
    for everything accepted to settle; the row is recorded and printed."""
    assert not system.dead_processes(), system.dead_processes()
    with Load(system.base_url) as load:
        time.sleep(WARM_SECONDS)
        restored = inject()
        recovery = probe_recovery(system.base_url, load.tally, restored)
        time.sleep(AFTER_SECONDS)
    found, settled = wait_settled(system.postgres.url, load.tally, SETTLE_SECONDS)
    row = Row(
        fault=f"{fault} [{system.broker}]",
        outcome=found,
        recovery_seconds=recovery,
        settled_seconds=settled,
        answered_503=load.tally.count(503),
        unexpected_5xx=len(load.tally.unexpected),
        note=note,
    )
    RESULTS.append(row)
    print(f"\n{table([row])}")
    assert not system.dead_processes(), f"exited: {system.dead_processes()}; see {system.logs}"
    assert load.tally.unexpected == [], load.tally.unexpected[:5]
    assert not load.tally.abandoned, load.tally.abandoned
    assert (found.unfinished, found.lost, found.duplicates, found.ledger_mismatch) == (
        0, 0, 0, 0,
    ), system.broker_state()  # fmt: skip
    assert found.failed == 0, "a fault of the system must not fail a run"
    return row


def test_a_worker_killed_with_kill_9_loses_and_duplicates_nothing(system: System) -> None:
    def kill() -> float:
        system.kill_worker("w1")
        killed = time.monotonic()
        system.start_worker("w3")  # the supervisor's replacement; w2 carries on meanwhile
        return killed

    inflict(system, "kill -9 a worker", kill)


def test_a_redis_restart_loses_nothing_and_the_api_answers_503_meanwhile(system: System) -> None:
    health: list[requests.Response] = []

    def check_health() -> None:
        health.append(requests.get(f"{system.base_url}/api/health", headers=SIGNED_IN, timeout=10))

    def restart() -> float:
        before_the_next_slot()
        return system.restart_redis(DOWN_SECONDS, check_health)

    inflict(system, "restart Redis", restart)

    # Submits, usage batches and webhooks are all stored in Postgres and answered 2xx while
    # Redis is down (the requeue jobs publish them later); the outage shows on the health check.
    assert [r.status_code for r in health] == [503]
    assert health[0].json()["redis"] != "ok"


def test_a_postgres_restart_loses_nothing_and_the_api_answers_503_meanwhile(system: System) -> None:
    def restart() -> float:
        before_the_next_slot()
        return system.restart_postgres(DOWN_SECONDS)

    row = inflict(system, "restart Postgres", restart)

    assert row.answered_503 > 0, "submits are refused with 503 while Postgres is down"


def test_a_rabbitmq_restart_loses_nothing(system: System) -> None:
    if system.rabbitmq is None:
        pytest.skip("a RabbitMQ fault: Celery's broker here is Redis")

    def restart() -> float:
        before_the_next_slot()
        return system.restart_rabbitmq(DOWN_SECONDS)

    inflict(system, "restart RabbitMQ", restart)


def test_killing_the_active_beat_hands_the_schedule_to_the_standby(system: System) -> None:
    takeover: list[float] = []

    def kill() -> float:
        active = wait_until(system.active_beat, 30, "a beat holding the scheduler lock")
        system.kill_beat(active)
        killed = time.monotonic()
        standby = wait_until(system.active_beat, 30, "the standby taking the scheduler lock")
        takeover.append(time.monotonic() - killed)
        assert standby != active
        system.start_beat(f"{active}-again")  # the supervisor's replacement, now the standby
        return killed

    row = inflict(system, "kill the active beat", kill)
    row.note = f"the standby took the scheduler lock {takeover[0]:.1f} s after the kill" + (
        f"; {row.note}" if row.note else ""
    )

    assert takeover[0] <= 15, f"the standby took {takeover[0]:.1f} s to take over"
