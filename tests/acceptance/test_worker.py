"""The worker runs each run once, records failures with a reason, and survives duplicates."""

from __future__ import annotations

import uuid

import pytest
from celery import Celery

import tests.agents_for_tests  # noqa: F401 - registers the `explode` agent
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database, sql_connection
from tests.support import ApiClient, new_run, wait_for_run

pytestmark = pytest.mark.usefixtures("worker")


def event_log(database_url: str, run_id: str) -> list[tuple[int, str, str | None]]:
    with sql_connection(database_url) as conn:
        rows = conn.execute(
            "select seq, event, data->>'status' from run_events where run_id = %s order by seq",
            (run_id,),
        ).fetchall()
    return [(int(seq), str(event), status) for seq, event, status in rows]


def test_same_message_delivered_twice_runs_the_agent_once(
    celery_app: Celery, db: Database, client: ApiClient, user_id: uuid.UUID, database_url: str
) -> None:
    run = new_run(db, "echo", user_id=user_id)
    celery_app.send_task(TASK_EXECUTE_RUN, args=[str(run.id)])
    celery_app.send_task(TASK_EXECUTE_RUN, args=[str(run.id)])
    # The worker takes one message at a time in order: once a later run is done, both are handled.
    marker = new_run(db, "echo", user_id=user_id)
    celery_app.send_task(TASK_EXECUTE_RUN, args=[str(marker.id)])
    wait_for_run(client, str(marker.id))

    view = wait_for_run(client, str(run.id))
    assert view["attempts"] == 1
    assert event_log(database_url, str(run.id)) == [
        (1, "workflow_status_update", "queued"),
        (2, "workflow_status_update", "running"),
        (3, "step_completed", None),
        (4, "workflow_status_update", "completed"),
    ]


def test_agent_exception_fails_the_run_with_its_reason(client: ApiClient) -> None:
    response = client.post(
        "/api/agents/invoke", json={"agent_type": "explode", "input": {"reason": "model said no"}}
    )
    run = wait_for_run(client, response.json()["request_id"])

    assert run["status"] == "failed"
    assert run["error"] == "step 'explode' failed after 1 attempt(s): ValueError: model said no"
    assert run["error_code"] == "AGENT_FAILED"
    assert run["steps"][0]["status"] == "failed"
    assert run["finished_at"] is not None
