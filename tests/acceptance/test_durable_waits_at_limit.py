"""Durable waits at the plan's concurrency limit: a due timer waits a tick and resumes as slots
free up; a fail timeout and a signal are not deferred."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import tests.workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.db import Database
from conveyor.runs.waits import wake_due_runs
from conveyor.settings import Settings
from tests.acceptance.durable_waits_calls import (
    db_now,
    run_until_waiting,
    signal_run,
)
from tests.support import (
    ApiClient,
    new_run,
    wait_until,
)


def on_plan_of_one(db: Database, user: uuid.UUID) -> None:
    """An account on a plan of the user's own allowing one run in flight."""
    plan = f"w{user.hex[:12]}"
    with db.transaction() as conn:
        conn.execute(
            "insert into plans (id, name, monthly_token_quota, monthly_cost_quota_micro_usd, "
            "daily_request_limit, max_concurrent_runs) values (%s, 'test', 1, 1, 1, 1)",
            (plan,),
        )
        conn.execute("insert into user_accounts (user_id, plan_id) values (%s, %s)", (user, plan))


def run_row(db: Database, run_id: uuid.UUID) -> dict[str, Any]:
    with db.transaction() as conn:
        row = conn.execute(
            "select r.status, r.wake_at, s.wake_at as step_wake_at from workflow_runs r "
            "join workflow_steps s on s.run_id = r.id and s.name = 'nap' where r.id = %s",
            (run_id,),
        ).fetchone()
    assert row is not None
    return dict(row)


def test_at_the_concurrency_limit_a_due_sleep_waits_a_tick_and_resumes_when_a_slot_frees(
    db: Database, settings: Settings
) -> None:
    busy, other = uuid.uuid4(), uuid.uuid4()
    on_plan_of_one(db, busy)
    on_plan_of_one(db, other)
    sleeping = run_until_waiting(db, settings, "nap", {"seconds": 60}, user_id=busy)
    others = run_until_waiting(db, settings, "nap", {"seconds": 60}, user_id=other)
    slept_until = run_row(db, sleeping)["wake_at"]
    occupying = new_run(db, "echo", {"message": "hi"}, user_id=busy)  # queued: the one slot
    later = db_now(db) + timedelta(minutes=2)

    woken = wake_due_runs(db, now=later)

    assert [run.run_id for run in woken] == [others]
    deferred = run_row(db, sleeping)
    assert deferred["status"] == "waiting"
    assert deferred["wake_at"] >= slept_until + timedelta(seconds=15)
    assert deferred["step_wake_at"] == slept_until  # the sleep's own end is kept
    assert wake_due_runs(db, now=later) == []  # still full at the next tick

    with db.transaction() as conn:
        conn.execute(
            "update workflow_runs set status = 'completed', finished_at = now() where id = %s",
            (occupying.id,),
        )
    woken = wake_due_runs(db, now=later)

    assert [(run.run_id, run.status) for run in woken] == [(sleeping, "queued")]
    with db.transaction() as conn:
        step = conn.execute(
            "select output from workflow_steps where run_id = %s and name = 'nap'", (sleeping,)
        ).fetchone()
    assert step is not None
    assert step["output"]["wake_at"] == slept_until.isoformat()


def test_of_many_due_sleeps_at_the_limit_one_resumes_per_free_slot(
    db: Database, settings: Settings
) -> None:
    user = uuid.uuid4()
    on_plan_of_one(db, user)
    runs = [run_until_waiting(db, settings, "nap", {"seconds": 60}, user_id=user) for _ in range(3)]
    later = db_now(db) + timedelta(minutes=2)
    results: list[int] = []
    start = threading.Barrier(3)

    def wake() -> None:
        start.wait()
        results.append(len(wake_due_runs(db, now=later)))

    threads = [threading.Thread(target=wake) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(results) == 1
    assert sorted(run_row(db, run)["status"] for run in runs) == ["queued", "waiting", "waiting"]


def test_an_event_wait_timing_out_with_fail_at_the_limit_fails_at_once(
    client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    on_plan_of_one(db, user_id)
    run_id = run_until_waiting(db, settings, "await_approval", {"ticket": "T-10"}, user_id=user_id)
    new_run(db, "echo", {"message": "hi"}, user_id=user_id)

    woken = wake_due_runs(db, now=db_now(db) + timedelta(hours=2))

    assert [(run.run_id, run.status) for run in woken] == [(run_id, "failed")]


def test_a_signal_resumes_a_run_at_the_limit(
    client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    on_plan_of_one(db, user_id)
    run_id = run_until_waiting(db, settings, "await_approval", {"ticket": "T-11"}, user_id=user_id)
    new_run(db, "echo", {"message": "hi"}, user_id=user_id)

    answer = signal_run(client, run_id, {"match": "T-11", "payload": "yes"})

    assert answer.status_code == 200, answer.text
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "queued"


def test_a_signal_after_the_deadline_of_a_wait_deferred_at_the_limit_is_still_409(
    client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    on_plan_of_one(db, user_id)
    inputs = {"ticket": "T-12", "timeout": 0.2}
    run_id = run_until_waiting(db, settings, "await_approval_or_go_on", inputs, user_id=user_id)
    new_run(db, "echo", {"message": "hi"}, user_id=user_id)
    wait_until(lambda: wake_due_runs(db) == [] and run_row_waits_later(db, run_id), 5, "deferral")

    answer = signal_run(client, run_id, {"match": "T-12"})

    assert answer.status_code == 409
    assert answer.json()["code"] == "WAIT_TIMED_OUT"


def run_row_waits_later(db: Database, run_id: uuid.UUID) -> bool:
    """The run still waits, its timer moved past the step's deadline."""
    with db.transaction() as conn:
        row = conn.execute(
            "select r.status = 'waiting' and r.wake_at > s.wake_at and s.wake_at < now() as later "
            "from workflow_runs r join workflow_steps s "
            "on s.run_id = r.id and s.status = 'waiting' "
            "where r.id = %s",
            (run_id,),
        ).fetchone()
    return bool(row and row["later"])
