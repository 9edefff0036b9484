"""Durable waits: a sleeping run holds no worker and no broker message, wakes once when the beat
job's clock passes its wake_at, and waiting time counts against no timeout (signals:
test_durable_wait_signals.py; the concurrency limit: test_durable_waits_at_limit.py)."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import redis
from celery import Celery

import tests.workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.runs.execution import Result, execute_run
from conveyor.runs.reaper import runs_to_republish
from conveyor.runs.waits import TASK_WAKE_WAITING_RUNS, wake_due_runs
from conveyor.settings import Settings
from tests.acceptance.durable_waits_calls import (
    THREE_DAYS,
    WAITING,
    broker_messages,
    db_now,
    events_of,
    run_until_waiting,
    submit,
)
from tests.support import (
    ApiClient,
    wait_for_run,
    wait_until,
    worker_subprocess,
)


def test_a_three_day_sleep_holds_no_worker_or_message_and_wakes_when_the_clock_passes(
    worker: Any, client: ApiClient, db: Database, clean_redis: redis.Redis, celery_app: Celery
) -> None:
    run_id = submit(client, "nap", {"seconds": THREE_DAYS})
    view = wait_for_run(client, run_id, until=WAITING)
    now = db_now(db)

    steps = {step["name"]: step for step in view["steps"]}
    wake_at = datetime.fromisoformat(view["wake_at"])
    assert now + timedelta(days=3) - timedelta(seconds=30) < wake_at <= now + timedelta(days=3)
    assert steps["before"]["status"] == "completed"
    assert steps["nap"]["status"] == "waiting"
    assert datetime.fromisoformat(steps["nap"]["wake_at"]) == wake_at
    assert steps["nap"]["wait"] == {"kind": "sleep"}
    wait_until(lambda: broker_messages(clean_redis) == 0, 5, "the run's message being acked")
    assert wake_due_runs(db, now=now + timedelta(days=2)) == []
    assert broker_messages(clean_redis) == 0

    celery_app.send_task(
        TASK_WAKE_WAITING_RUNS, kwargs={"now": (now + timedelta(days=3, seconds=1)).isoformat()}
    )
    done = wait_for_run(client, run_id)

    assert done["status"] == "completed", done
    assert done["output"] == {"slept_until": wake_at.isoformat()}
    assert [s["attempt"] for s in done["steps"]] == [1, 1, 1]
    names = [(e["event"], e["data"].get("status")) for e in events_of(client, run_id)]
    assert ("step_waiting", None) in names
    assert ("workflow_status_update", "waiting") in names
    assert names.count(("step_resumed", None)) == 1


def test_a_rerun_from_the_step_after_a_sleep_reuses_the_sleep(
    worker: Any, client: ApiClient, db: Database, celery_app: Celery
) -> None:
    run_id = submit(client, "nap", {"seconds": THREE_DAYS})
    wait_for_run(client, run_id, until=WAITING)
    later = db_now(db) + timedelta(days=3, seconds=1)
    celery_app.send_task(TASK_WAKE_WAITING_RUNS, kwargs={"now": later.isoformat()})
    first = wait_for_run(client, run_id)

    response = client.post(f"/api/runs/{run_id}/rerun", json={"from_step": "after"})
    assert response.status_code == 202, response.text
    rerun = wait_for_run(client, str(response.json()["id"]))

    assert rerun["status"] == "completed", rerun
    assert rerun["output"] == first["output"]
    steps = {step["name"]: step for step in rerun["steps"]}
    assert steps["nap"]["reused_from"] == run_id


def test_a_synchronous_execute_answers_once_the_run_waits(worker: Any, client: ApiClient) -> None:
    started = time.monotonic()
    response = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "nap", "inputs": {"seconds": THREE_DAYS}},
    )

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "waiting"
    assert time.monotonic() - started < 5  # not the whole WORKFLOW_WAIT_SECONDS


def test_two_wake_jobs_at_once_resume_a_run_once(db: Database, settings: Settings) -> None:
    run_id = run_until_waiting(db, settings, "nap", {"seconds": THREE_DAYS})
    later = db_now(db) + timedelta(days=4)
    results: list[int] = []
    start = threading.Barrier(4)

    def wake() -> None:
        start.wait()
        results.append(len(wake_due_runs(db, now=later)))

    threads = [threading.Thread(target=wake) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [0, 0, 0, 1]
    with db.transaction() as conn:
        resumed = conn.execute(
            "select count(*) as n from run_events where run_id = %s and event = 'step_resumed'",
            (run_id,),
        ).fetchone()
        run = conn.execute("select status from workflow_runs where id = %s", (run_id,)).fetchone()
    assert resumed is not None
    assert resumed["n"] == 1
    assert run is not None
    assert run["status"] == "queued"


def test_a_woken_run_whose_publish_was_lost_is_republished_by_the_requeue_job(
    db: Database, settings: Settings
) -> None:
    run_id = run_until_waiting(db, settings, "nap", {"seconds": THREE_DAYS})
    woken = wake_due_runs(db, now=db_now(db) + timedelta(days=4))  # nothing published after

    assert [run.run_id for run in woken] == [run_id]
    assert runs_to_republish(db, older_than_seconds=0) == [run_id]


def test_waiting_time_does_not_count_against_the_run_timeout(
    worker: Any, client: ApiClient, db: Database, celery_app: Celery
) -> None:
    # The run may execute for 1.5 s; it sleeps 2 s of real time, on the database's own clock.
    run_id = submit(client, "nap_in_a_short_run", {"seconds": 2})
    wait_for_run(client, run_id, until=WAITING)
    woken = wait_until(lambda: wake_due_runs(db), 10, "the sleep ending")
    for run in woken:
        celery_app.send_task(TASK_EXECUTE_RUN, args=[str(run.run_id)])

    done = wait_for_run(client, run_id)

    assert done["status"] == "completed", done


def test_cancelling_a_waiting_run_ends_it_at_once(
    client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    run_id = run_until_waiting(db, settings, "nap", {"seconds": THREE_DAYS}, user_id=user_id)

    cancelled = client.post(f"/api/runs/{run_id}/cancel")

    assert cancelled.status_code == 200, cancelled.text
    view = cancelled.json()
    assert view["status"] == "cancelled"
    assert view["wake_at"] is None
    assert [s["status"] for s in view["steps"]] == ["completed", "cancelled", "cancelled"]
    assert wake_due_runs(db, now=db_now(db) + timedelta(days=4)) == []


def test_a_worker_killed_while_its_run_waits_loses_nothing_and_runs_nothing_twice(
    settings: Settings, client: ApiClient, db: Database, request: Any, celery_app: Celery
) -> None:
    with worker_subprocess(settings, "runs") as process:
        run_id = submit(client, "nap", {"seconds": THREE_DAYS})
        wait_for_run(client, run_id, until=WAITING)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    # The killed worker's message, were it redelivered, finds nothing to claim: waiting is not
    # claimable, so only the wake-up starts the run again.
    publisher = EventPublisher(str(settings.redis_url))
    try:
        assert execute_run(db, publisher, settings, uuid.UUID(run_id)) is Result.SKIPPED
    finally:
        publisher.close()
    request.getfixturevalue("worker")  # a new worker, on every queue

    celery_app.send_task(
        TASK_WAKE_WAITING_RUNS, kwargs={"now": (db_now(db) + timedelta(days=4)).isoformat()}
    )
    done = wait_for_run(client, run_id)

    assert done["status"] == "completed", done
    assert done["attempts"] == 2  # claimed before the wait and after it, nothing more
    assert [(s["name"], s["attempt"]) for s in done["steps"]] == [
        ("before", 1),
        ("nap", 1),
        ("after", 1),
    ]
    assert done["steps"][0]["output"] == {"attempt": 1}
