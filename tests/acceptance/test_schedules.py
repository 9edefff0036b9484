"""`/api/schedules`: create, list, read, pause and resume, delete; clear 4xx answers for a bad
cron, timezone, workflow or inputs; the beat job's task starts the due run, which completes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery

import tests.workflows_for_tests  # noqa: F401 - registers write_brief
from conveyor.ops.user_schedules import TASK_FIRE_SCHEDULES
from tests.acceptance.test_cli import base_env, conveyor
from tests.support import ApiClient, wait_for_run, wait_until

USES_FAKE_LLM = True
BRIEF = {"workflow_id": "write_brief", "inputs": {"topic": "ticks"}}


def create(client: ApiClient, **fields: Any) -> Any:
    return client.post("/api/schedules", json={**BRIEF, "cron": "0 9 * * 1-5", **fields})


def test_a_schedule_is_created_listed_read_paused_resumed_and_deleted(client: ApiClient) -> None:
    made = create(client, timezone="America/New_York")
    assert made.status_code == 201, made.text
    schedule = made.json()
    path = f"/api/schedules/{schedule['id']}"

    listed = client.get("/api/schedules").json()["schedules"]
    paused = client.request("PATCH", path, json={"paused": True}).json()
    resumed = client.request("PATCH", path, json={"paused": False}).json()
    deleted = client.request("DELETE", path)

    assert schedule["timezone"] == "America/New_York"
    assert schedule["paused"] is False
    assert [s["id"] for s in listed] == [schedule["id"]]
    assert paused["paused"] is True
    assert resumed["paused"] is False
    assert deleted.status_code == 204
    assert client.get(path).json()["code"] == "SCHEDULE_NOT_FOUND"


def test_bad_schedules_get_a_clear_4xx(client: ApiClient) -> None:
    answers = {
        "cron": create(client, cron="every monday"),
        "seconds": create(client, cron="*/5 * * * * *"),
        "impossible": create(client, cron="0 0 30 2 *"),
        "timezone": create(client, timezone="Mars/Olympus"),
        "workflow": create(client, workflow_id="no_such_workflow"),
        "inputs": create(client, inputs={"topic": 3}),
    }

    codes = {name: (a.status_code, a.json()["code"]) for name, a in answers.items()}
    assert codes == {
        "cron": (400, "INVALID_CRON"),
        "seconds": (400, "INVALID_CRON"),
        "impossible": (400, "INVALID_CRON"),
        "timezone": (400, "INVALID_TIMEZONE"),
        "workflow": (404, "UNKNOWN_WORKFLOW"),
        "inputs": (400, "INVALID_INPUT"),
    }


def test_someone_elses_schedule_is_not_found(
    client: ApiClient, make_client: Callable[..., ApiClient]
) -> None:
    schedule = create(client).json()

    other = make_client(uuid.uuid4())

    assert other.get(f"/api/schedules/{schedule['id']}").status_code == 404
    assert other.request("DELETE", f"/api/schedules/{schedule['id']}").status_code == 404
    assert other.get("/api/schedules").json()["schedules"] == []


def test_the_beat_task_starts_the_due_run_and_it_completes(
    worker: Any, client: ApiClient, celery_app: Celery
) -> None:
    schedule = create(client, cron="*/10 * * * *").json()
    due = datetime.fromisoformat(schedule["next_due_at"])

    celery_app.send_task(
        TASK_FIRE_SCHEDULES, kwargs={"now": (due + timedelta(seconds=5)).isoformat()}
    )
    run_id = wait_until(
        lambda: client.get(f"/api/schedules/{schedule['id']}").json()["last_run_id"],
        15,
        "the scheduled run",
    )

    assert wait_for_run(client, run_id, timeout=30)["status"] == "completed"


def test_operators_see_active_schedules_and_the_next_due_in_the_admin_maintenance_view(
    client: ApiClient, admin: ApiClient
) -> None:
    schedule = create(client, cron="15 3 * * *", timezone="Asia/Tokyo").json()
    paused = create(client).json()
    client.request("PATCH", f"/api/schedules/{paused['id']}", json={"paused": True})

    view = admin.get("/api/admin/maintenance").json()

    assert "fire_schedules" in [job["name"] for job in view["jobs"]]
    assert view["schedules"]["active"] == 1
    assert view["schedules"]["paused"] == 1
    [upcoming] = view["schedules"]["next"]
    assert (upcoming["id"], upcoming["cron"], upcoming["timezone"]) == (
        schedule["id"],
        "15 3 * * *",
        "Asia/Tokyo",
    )


def test_conveyor_maintenance_list_shows_the_api_schedules(
    client: ApiClient, database_url: str, tmp_path: Path
) -> None:
    create(client, cron="15 3 * * *", timezone="Asia/Tokyo")

    result = conveyor("maintenance", "list", env=base_env(tmp_path, DATABASE_URL=database_url))

    assert result.returncode == 0, result.stderr
    assert "API schedules: 1 active, 0 paused" in result.stdout
    assert "write_brief (15 3 * * *, Asia/Tokyo), next " in result.stdout
