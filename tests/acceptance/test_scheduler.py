"""Periodic jobs happen once per period: with two schedulers, after the active one dies, after
downtime, and when a period is run again by hand. Real Postgres, Redis and worker; the
schedulers' clock is injected."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from click.testing import CliRunner

from conveyor.cli.main import main as cli
from conveyor.cli.services import EmbeddedRedis, free_port
from conveyor.db import Database
from conveyor.ops import job_runs
from conveyor.ops.jobs import JOBS
from conveyor.ops.schedule import Every
from conveyor.settings import Settings, get_settings
from tests.support import ApiClient, token_for, wait_until
from worker.celery_app import create_celery
from worker.scheduler import TICK_SECONDS, ConveyorScheduler

JOB_COUNT = len(JOBS)


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    # 10:00:10 UTC on the 3rd: every job has a current period (daily since 02:00, monthly since
    # the 1st, within the 7-day catch-up; hourly since :05 of the last hour; interval slots).
    return Clock(datetime(2026, 11, 3, 10, 0, 10, tzinfo=UTC))


@pytest.fixture
def schedulers(celery_app: Celery, clock: Clock) -> Iterator[list[ConveyorScheduler]]:
    """Two beat schedulers, as two beat processes would run them."""
    made = [ConveyorScheduler(app=celery_app, clock=clock) for _ in range(2)]
    yield made
    for scheduler in made:
        scheduler.close()


def runs(db: Database) -> list[dict[str, Any]]:
    with db.transaction() as conn:
        return conn.execute(
            "select job, period_key, status, attempts, skipped from maintenance_runs "
            "order by job, period_key"
        ).fetchall()


def wait_for_runs(db: Database, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = runs(db)
        if len(found) >= count and all(r["status"] != "running" for r in found):
            return found
        time.sleep(0.1)
    raise AssertionError(f"expected {count} finished runs, got {found}")


@pytest.mark.usefixtures("worker")
def test_two_schedulers_fire_each_job_once_per_period(
    schedulers: list[ConveyorScheduler], db: Database
) -> None:
    sent = [0, 0]
    for _ in range(3):
        for index, scheduler in enumerate(schedulers):
            before = len(scheduler.dispatcher._sent)
            scheduler.tick()
            sent[index] += len(scheduler.dispatcher._sent) - before

    found = wait_for_runs(db, JOB_COUNT)

    assert sorted(sent) == [0, JOB_COUNT]  # one scheduler sent everything, the other nothing
    assert len(found) == JOB_COUNT
    assert {r["status"] for r in found} == {"succeeded"}
    assert {r["attempts"] for r in found} == {1}


@pytest.mark.usefixtures("worker")
def test_when_the_active_scheduler_dies_the_standby_takes_over(
    schedulers: list[ConveyorScheduler], db: Database, clock: Clock
) -> None:
    active, standby = schedulers
    active.tick()
    assert standby.lock.try_acquire() is False
    wait_for_runs(db, JOB_COUNT)

    active.lock.release()  # its process dies: the session, and the lock, go with it
    # Postgres frees the lock when the old session's backend has exited, a moment after the close;
    # a standby keeps trying (every STANDBY_SECONDS in production).
    wait_until(standby.lock.try_acquire, 10, "the standby taking the scheduler lock")
    clock.now += timedelta(seconds=30)  # the interval jobs' next slot
    standby.tick()

    every_30_s = sum(1 for job in JOBS if job.cadence == Every(30))
    found = wait_for_runs(db, JOB_COUNT + every_30_s)  # only those have a new period
    stale_runs = [r for r in found if r["job"] == "requeue_stale_runs"]
    assert [r["period_key"] for r in stale_runs] == ["2026-11-03T10:00:00Z", "2026-11-03T10:00:30Z"]


def test_a_scheduler_outlives_the_broker_being_down_and_sends_once_it_is_back(
    settings: Settings, clock: Clock, tmp_path: Path
) -> None:
    broker = EmbeddedRedis(tmp_path / "broker", port=free_port(), persist=False)
    scheduler = ConveyorScheduler(
        app=create_celery(settings.model_copy(update={"redis_url": broker.url})), clock=clock
    )
    try:
        assert scheduler.tick() == TICK_SECONDS  # every publish failed; the tick did not raise
        assert scheduler.dispatcher._sent == {}

        broker.start()
        scheduler.tick()
        queued = redis.Redis.from_url(broker.url).llen("maintenance")
    finally:
        scheduler.close()
        broker.stop()

    assert len(scheduler.dispatcher._sent) == JOB_COUNT
    assert queued == JOB_COUNT


@pytest.mark.usefixtures("worker")
def test_a_daily_job_missed_during_downtime_runs_once_on_start(
    celery_app: Celery, db: Database
) -> None:
    # The system comes back at 18:00, long after 02:00: today's maintenance is still due.
    evening = Clock(datetime(2026, 11, 3, 18, 0, 10, tzinfo=UTC))
    first = ConveyorScheduler(app=celery_app, clock=evening)
    first.tick()
    first.close()
    wait_for_runs(db, JOB_COUNT)
    restarted = ConveyorScheduler(app=celery_app, clock=evening)
    restarted.tick()
    restarted.close()

    daily = [r for r in runs(db) if r["job"] == "daily_maintenance"]
    assert [(r["period_key"], r["status"], r["attempts"]) for r in daily] == [
        ("2026-11-03", "succeeded", 1)
    ]


@pytest.mark.usefixtures("worker")
def test_a_second_message_for_a_done_period_is_a_recorded_no_op(
    celery_app: Celery, db: Database
) -> None:
    kwargs = {"job": "usage_rollup", "period": "2026-11-23T10"}
    celery_app.send_task("maintenance.usage_rollup", kwargs=kwargs, queue="maintenance")
    wait_for_runs(db, 1)
    celery_app.send_task("maintenance.usage_rollup", kwargs=kwargs, queue="maintenance")

    deadline = time.monotonic() + 15
    while runs(db)[0]["skipped"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    [run] = runs(db)
    assert (run["attempts"], run["skipped"]) == (1, 1)


def test_a_failed_period_can_be_claimed_again_but_a_done_one_cannot(db: Database) -> None:
    first = job_runs.claim(db, "daily_maintenance", "2026-11-20")
    assert first is not None
    job_runs.fail(db, first, "disk full")

    assert job_runs.claim(db, "daily_maintenance", "2026-11-20") == first
    job_runs.finish(db, first, {"run_events": 3})
    assert job_runs.claim(db, "daily_maintenance", "2026-11-20") is None


def test_running_the_monthly_reset_twice_by_hand_changes_nothing_the_second_time(
    settings: Settings,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    assert settings.database_url is not None
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    get_settings.cache_clear()  # the command reads the environment afresh
    request.addfinalizer(get_settings.cache_clear)
    with db.transaction() as conn:
        for _ in range(3):
            conn.execute("select conveyor_ensure_account(gen_random_uuid())")
    runner = CliRunner()
    args = ["maintenance", "run", "monthly_quota_reset", "--period", "2099-01"]

    first = runner.invoke(cli, args)
    balances = balances_of(db)
    second = runner.invoke(cli, args)

    assert first.exit_code == 0, first.output
    assert "ran" in first.output
    assert "'credit_grants': 3" in first.output
    assert second.exit_code == 0, second.output
    assert "skipped" in second.output
    assert balances_of(db) == balances


def balances_of(db: Database) -> list[tuple[Any, ...]]:
    with db.transaction() as conn:
        rows = conn.execute(
            "select user_id, credit_balance from user_accounts order by user_id"
        ).fetchall()
    return [(r["user_id"], r["credit_balance"]) for r in rows]


def test_admins_see_each_job_with_its_next_run_and_last_runs(
    make_client: Callable[..., ApiClient], db: Database
) -> None:
    run_id = job_runs.claim(db, "daily_maintenance", "2026-11-20")
    assert run_id is not None
    job_runs.finish(db, run_id, {"run_events": 12})
    admin = make_client(token=token_for(uuid.uuid4(), admin=True))

    response = admin.get("/api/admin/maintenance")

    assert response.status_code == 200
    jobs = {job["name"]: job for job in response.json()["jobs"]}
    assert set(jobs) >= {"daily_maintenance", "monthly_quota_reset", "requeue_stale_runs"}
    daily = jobs["daily_maintenance"]
    assert daily["schedule"] == "daily at 02:00"
    assert daily["next_run_at"].endswith("T02:00:00+00:00")
    assert daily["last_runs"][0]["rows_affected"] == {"run_events": 12}


def test_the_maintenance_view_is_for_admins_only(client: ApiClient) -> None:
    assert client.get("/api/admin/maintenance").status_code == 403


def test_two_beat_processes_one_schedules_and_the_other_takes_over_when_it_is_killed(
    settings: Settings, tmp_path: Path
) -> None:
    assert settings.database_url is not None
    assert settings.redis_url is not None
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CONVEYOR_DATA_DIR": str(tmp_path),
        "LOG_FORMAT": "json",
    }
    logs = [tmp_path / "beat-a.log", tmp_path / "beat-b.log"]
    with ExitStack() as stack:
        beats = [
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker.app", "beat", "--loglevel", "INFO"],
                env=env,
                stdout=stack.enter_context(log.open("w")),
                stderr=subprocess.STDOUT,
            )
            for log in logs
        ]
        for beat in beats:
            stack.callback(beat.wait, timeout=10)
            stack.callback(beat.kill)
        active = wait_for(lambda: next((i for i, log in enumerate(logs) if sent(log)), None))
        standby = 1 - active
        time.sleep(2)  # the standby keeps trying the lock and sends nothing
        assert not sent(logs[standby])

        beats[active].kill()  # no goodbye: Postgres ends its session and frees the lock
        beats[active].wait(timeout=10)

        assert wait_for(lambda: sent(logs[standby]) or None, timeout=20)


def sent(log: Path) -> bool:
    return "scheduler_sent" in log.read_text()


def wait_for(probe: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"nothing after {timeout} s")


@pytest.mark.parametrize(
    ("before_midnight", "at_midnight", "period"),
    [
        # 1 November 2026: New York is still on daylight time at midnight (EDT, UTC-4).
        ("2026-11-01T03:59:59+00:00", "2026-11-01T04:00:00+00:00", "2026-11"),
        # 1 December 2026: standard time (EST, UTC-5), an hour later in UTC.
        ("2026-12-01T04:59:59+00:00", "2026-12-01T05:00:00+00:00", "2026-12"),
    ],
)
def test_the_monthly_reset_fires_at_local_midnight_in_the_configured_timezone(
    settings: Settings, before_midnight: str, at_midnight: str, period: str
) -> None:
    new_york = settings.model_copy(update={"timezone": "America/New_York"})
    clock = Clock(datetime.fromisoformat(before_midnight))
    scheduler = ConveyorScheduler(app=create_celery(new_york), clock=clock)
    try:
        assert scheduler.lock.try_acquire()
        monthly = "monthly_quota_reset"
        assert [d.period_key for d in scheduler.dispatcher.tick() if d.job.name == monthly] == []

        clock.now = datetime.fromisoformat(at_midnight)
        sent = [d.period_key for d in scheduler.dispatcher.tick() if d.job.name == monthly]
    finally:
        scheduler.close()

    assert sent == [period]
