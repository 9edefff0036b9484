"""Durable waits: a sleeping run holds no worker and no broker message, wakes once when the beat
job's clock passes its wake_at, and waiting time counts against no timeout."""

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
from conveyor.auth.tokens import mint_service_token
from conveyor.constants import QUEUES, TASK_EXECUTE_RUN
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.ops.status import UNACKED_KEY
from conveyor.runs.execution import Result, execute_run
from conveyor.runs.reaper import runs_to_republish
from conveyor.runs.waits import TASK_WAKE_WAITING_RUNS, wake_due_runs
from conveyor.settings import Settings
from tests.support import (
    API_SECRET,
    ApiClient,
    new_run,
    wait_for_run,
    wait_until,
    worker_subprocess,
)

THREE_DAYS = 3 * 24 * 3600
WAITING = frozenset({"waiting"})


def db_now(db: Database) -> datetime:
    """The database's clock, which the beat job compares wake_at with."""
    with db.transaction() as conn:
        row = conn.execute("select now() as now").fetchone()
    assert row is not None
    return row["now"]


def broker_messages(broker: redis.Redis) -> int:
    """Messages waiting in every queue plus those delivered and not yet acked."""
    return sum(broker.llen(queue) for queue in QUEUES) + broker.hlen(UNACKED_KEY)


def submit(client: ApiClient, workflow_id: str, inputs: dict[str, Any]) -> str:
    """Start a run asynchronously; its id."""
    response = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": workflow_id, "inputs": inputs, "async": True},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["workflow_run_id"])


def run_until_waiting(
    db: Database,
    settings: Settings,
    workflow_id: str,
    inputs: dict[str, Any],
    user_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A run executed in this process up to its wait (no worker, no broker)."""
    run = new_run(db, workflow_id, inputs, user_id=user_id)
    publisher = EventPublisher(str(settings.redis_url))
    try:
        assert execute_run(db, publisher, settings, run.id) is Result.WAITING
    finally:
        publisher.close()
    return run.id


def events_of(client: ApiClient, run_id: str) -> list[dict[str, Any]]:
    """The run's event log."""
    return list(client.get(f"/api/runs/{run_id}/events").json()["events"])


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


# wait_for_event and signals


def signal_run(
    client: ApiClient, run_id: uuid.UUID | str, body: dict[str, Any], name: str = "approved"
) -> Any:
    """POST a signal."""
    return client.post(f"/api/runs/{run_id}/signals/{name}", json=body)


def test_a_signal_resumes_the_run_and_its_payload_becomes_the_steps_output(
    worker: Any, client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    run_id = run_until_waiting(db, settings, "await_approval", {"ticket": "T-1"}, user_id=user_id)
    waiting = client.get(f"/api/runs/{run_id}").json()

    response = signal_run(client, run_id, {"match": "T-1", "payload": {"by": "ann"}})
    done = wait_for_run(client, str(run_id))

    assert waiting["status"] == "waiting"
    assert waiting["steps"][0]["wait"] == {
        "kind": "event",
        "event": "approved",
        "match": "T-1",
        "on_timeout": "fail",
    }
    assert response.status_code == 200, response.text
    assert response.json() == {
        "workflow_run_id": str(run_id),
        "status": "queued",
        "step": "approval",
        "event": "approved",
    }
    assert done["status"] == "completed", done
    assert done["steps"][0]["output"] == {"by": "ann"}
    assert done["output"] == {"approval": {"by": "ann"}}


def test_two_signals_at_once_resume_the_run_once(
    client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    run_id = run_until_waiting(db, settings, "await_approval", {"ticket": "T-2"}, user_id=user_id)
    start = threading.Barrier(2)
    answers: list[Any] = []

    def send(n: int) -> None:
        start.wait()
        answers.append(signal_run(client, run_id, {"match": "T-2", "payload": {"n": n}}))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(answer.status_code for answer in answers) == [200, 409]
    refused = next(answer for answer in answers if answer.status_code == 409).json()
    assert refused["code"] == "SIGNAL_ALREADY_DELIVERED"
    resumed = [e for e in events_of(client, str(run_id)) if e["event"] == "step_resumed"]
    assert len(resumed) == 1


def test_a_signal_for_a_run_not_waiting_for_that_event_is_409(
    client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    sleeping = run_until_waiting(db, settings, "nap", {"seconds": 60}, user_id=user_id)

    answer = signal_run(client, sleeping, {})

    assert answer.status_code == 409
    assert answer.json()["code"] == "RUN_NOT_WAITING"
    assert answer.json()["details"] == {"status": "waiting", "waiting_for": "sleep"}


def test_a_signal_with_another_match_key_is_409_and_leaves_the_run_waiting(
    client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    run_id = run_until_waiting(db, settings, "await_approval", {"ticket": "T-3"}, user_id=user_id)

    answer = signal_run(client, run_id, {"match": "T-4"})

    assert answer.status_code == 409
    assert answer.json()["code"] == "SIGNAL_MATCH_MISMATCH"
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "waiting"


def test_a_signal_after_the_deadline_is_409_and_the_timeout_decides(
    client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    inputs = {"ticket": "T-5", "timeout": 0.2}
    run_id = run_until_waiting(db, settings, "await_approval", inputs, user_id=user_id)
    wait_until(
        lambda: (
            db_now(db) > datetime.fromisoformat(client.get(f"/api/runs/{run_id}").json()["wake_at"])
        ),
        5,
        "the deadline passing",
    )

    answer = signal_run(client, run_id, {"match": "T-5"})

    assert answer.status_code == 409
    assert answer.json()["code"] == "WAIT_TIMED_OUT"


def test_an_event_wait_that_times_out_with_continue_completes_with_timed_out(
    worker: Any, client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    inputs = {"ticket": "T-6", "timeout": 3600}
    run_id = run_until_waiting(db, settings, "await_approval_or_go_on", inputs, user_id=user_id)
    woken = wake_due_runs(db, now=db_now(db) + timedelta(hours=2))
    for run in woken:
        worker.app.send_task(TASK_EXECUTE_RUN, args=[str(run.run_id)])

    done = wait_for_run(client, str(run_id))

    assert done["status"] == "completed", done
    assert done["output"] == {"approval": {"timed_out": True}}


def test_an_event_wait_that_times_out_with_fail_fails_the_run(
    client: ApiClient, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    run_id = run_until_waiting(db, settings, "await_approval", {"ticket": "T-7"}, user_id=user_id)

    woken = wake_due_runs(db, now=db_now(db) + timedelta(hours=2))
    view = client.get(f"/api/runs/{run_id}").json()

    assert [(run.run_id, run.status) for run in woken] == [(run_id, "failed")]
    assert view["status"] == "failed"
    assert view["error_code"] == "WAIT_TIMEOUT"
    assert [(s["status"], s["error_code"]) for s in view["steps"]] == [
        ("failed", "WAIT_TIMEOUT"),
        ("skipped", None),
    ]


def test_a_service_token_signals_only_with_the_runs_signal_scope(
    make_client: Any, user_id: uuid.UUID, db: Database, settings: Settings
) -> None:
    run_id = run_until_waiting(db, settings, "await_approval", {"ticket": "T-8"}, user_id=user_id)
    unscoped = make_client(token=mint_service_token("relay", ["runs:write"], secret=API_SECRET))
    scoped = make_client(token=mint_service_token("relay", ["runs:signal"], secret=API_SECRET))

    refused = signal_run(unscoped, run_id, {"match": "T-8"})
    accepted = signal_run(scoped, run_id, {"match": "T-8", "payload": "ok"})

    assert refused.status_code == 403
    assert accepted.status_code == 200, accepted.text
    with db.transaction() as conn:
        audited = conn.execute(
            "select subject, details ->> 'caller' as caller from audit_logs "
            "where action = 'service.run.signal'"
        ).fetchall()
    assert audited == [{"subject": str(run_id), "caller": "service:relay"}]


def test_someone_elses_run_cannot_be_signalled(
    make_client: Any, db: Database, settings: Settings
) -> None:
    run_id = run_until_waiting(db, settings, "await_approval", {"ticket": "T-9"})

    answer = signal_run(make_client(), run_id, {"match": "T-9"})

    assert answer.status_code == 404
    assert answer.json()["code"] == "RUN_NOT_FOUND"


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
