"""Singleton keys (drop, queue, replace) and debounce keys through the API, with real workers."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery

import tests.workflows_for_tests  # noqa: F401 - registers stubborn_sleep
from conveyor.constants import TASK_DISPATCH_RUNS
from conveyor.db import Database
from conveyor.settings import Settings
from tests.acceptance.test_concurrency_keys import generous_plan
from tests.support import ApiClient, wait_for_run, wait_until, worker_subprocess

NAP = 0.2


@pytest.fixture
def tenant(db: Database, make_client: Callable[..., ApiClient]) -> ApiClient:
    """A client for a user on a generous plan."""
    user = uuid.uuid4()
    generous_plan(db, user)
    return make_client(user)


def post(client: ApiClient, **flow: Any) -> Any:
    """Submit a short run asynchronously with this flow control; the response."""
    return client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "stubborn_sleep", "inputs": {"seconds": NAP}, "async": True, **flow},
    )


def submit(client: ApiClient, **flow: Any) -> str:
    response = post(client, **flow)
    assert response.status_code == 202, response.text
    return str(response.json()["workflow_run_id"])


def times(db: Database, run_ids: list[str]) -> list[tuple[Any, Any]]:
    """(started_at, finished_at) of each run, in the order given."""
    with db.transaction() as conn:
        rows = conn.execute(
            "select id::text, started_at, finished_at from workflow_runs "
            "where id = any(%s::uuid[])",
            (run_ids,),
        ).fetchall()
    by_id = {row["id"]: (row["started_at"], row["finished_at"]) for row in rows}
    return [by_id[run_id] for run_id in run_ids]


def test_a_dropped_singleton_answers_409_with_the_run_in_flight(
    tenant: ApiClient, db: Database
) -> None:
    first = submit(tenant, singleton={"key": "mine", "policy": "drop"})

    response = post(tenant, singleton={"key": "mine", "policy": "drop"})

    assert response.status_code == 409
    assert response.json()["code"] == "SINGLETON_IN_FLIGHT"
    assert response.json()["run_id"] == first
    with db.transaction() as conn:
        stored = conn.execute("select count(*) as n from workflow_runs").fetchone()
    assert stored == {"n": 1}


def test_queued_singletons_run_one_at_a_time(
    tenant: ApiClient, db: Database, settings: Settings
) -> None:
    run_ids = [submit(tenant, singleton={"key": "report", "policy": "queue"}) for _ in range(3)]
    with worker_subprocess(settings, "runs"), worker_subprocess(settings, "runs"):
        views = [wait_for_run(tenant, run_id, timeout=30) for run_id in run_ids]

    assert [view["status"] for view in views] == ["completed"] * 3
    spans = sorted(times(db, run_ids))
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))


def test_a_replacing_singleton_cancels_the_run_in_flight(
    tenant: ApiClient, settings: Settings
) -> None:
    old = submit(tenant, singleton={"key": "k", "policy": "replace"})
    new = submit(tenant, singleton={"key": "k", "policy": "replace"})

    with worker_subprocess(settings, "runs"):
        view = wait_for_run(tenant, new, timeout=30)

    replaced = tenant.get(f"/api/runs/{old}").json()
    assert (replaced["status"], replaced["error_code"]) == ("cancelled", "REPLACED")
    assert view["status"] == "completed"


def test_only_the_last_debounced_submit_runs(
    tenant: ApiClient, settings: Settings, celery_app: Celery
) -> None:
    run_ids = [submit(tenant, debounce={"key": "search", "seconds": 1}) for _ in range(3)]
    earlier = [tenant.get(f"/api/runs/{run_id}").json() for run_id in run_ids[:2]]
    assert [(v["status"], v["error_code"]) for v in earlier] == [("cancelled", "DEBOUNCED")] * 2
    assert tenant.get(f"/api/runs/{run_ids[2]}").json()["status"] == "queued"

    with worker_subprocess(settings, "runs,maintenance"):

        def dispatched() -> bool:
            celery_app.send_task(TASK_DISPATCH_RUNS, queue="maintenance")
            time.sleep(0.3)
            return tenant.get(f"/api/runs/{run_ids[2]}").json()["status"] == "completed"

        wait_until(dispatched, 30, "the last debounced run completing")


def test_a_debounced_run_waits_for_its_window(tenant: ApiClient, db: Database) -> None:
    run_id = submit(tenant, debounce={"key": "search", "seconds": 60})
    with db.transaction() as conn:
        row = conn.execute(
            "select not_before - created_at > interval '59 seconds' as later, dispatched_at "
            "from workflow_runs where id = %s",
            (run_id,),
        ).fetchone()
    assert row is not None
    assert row["later"] is True
    assert row["dispatched_at"] is None


@pytest.mark.parametrize(
    "flow",
    [
        {"singleton": {"key": "k", "policy": "sometimes"}},
        {"debounce": {"key": "k", "seconds": 0}},
        {"concurrency": {"key": "k", "limit": 0}},
        {"priority": 10},
        {"concurrency": {"key": "{{ nothing.here }}", "limit": 1}},
        {"concurrency": {"key": "k", "limit": 1}, "singleton": {"key": "k"}},
    ],
)
def test_bad_flow_control_is_a_400(tenant: ApiClient, flow: dict[str, Any]) -> None:
    response = post(tenant, **flow)

    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_INPUT"


def test_a_users_singleton_key_cannot_reach_another_users_run(
    make_client: Callable[..., ApiClient], db: Database
) -> None:
    victim, attacker = uuid.uuid4(), uuid.uuid4()
    for user in (victim, attacker):
        generous_plan(db, user)
    theirs = submit(make_client(victim), singleton={"key": "shared", "policy": "queue"})

    submit(make_client(attacker), singleton={"key": "shared", "policy": "replace"})

    with db.transaction() as conn:
        row = conn.execute(
            "select status, concurrency_key from workflow_runs where id = %s", (theirs,)
        ).fetchone()
    assert row is not None
    assert row["status"] != "cancelled"
    assert row["concurrency_key"] == f"singleton:user:{victim}:shared"


def test_a_template_in_a_users_body_key_is_refused(tenant: ApiClient) -> None:
    response = post(tenant, concurrency={"key": "{{ inputs.seconds * 1000000000 }}", "limit": 1})

    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_INPUT"
