"""wait_for_event and its signals: a signal resumes the run once with its payload as the step's
output; the refusals; the timeout's two outcomes; who may signal."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import tests.workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.auth.tokens import mint_service_token
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database
from conveyor.runs.waits import wake_due_runs
from conveyor.settings import Settings
from tests.acceptance.durable_waits_calls import (
    db_now,
    events_of,
    run_until_waiting,
    signal_run,
)
from tests.support import (
    API_SECRET,
    ApiClient,
    wait_for_run,
    wait_until,
)


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
