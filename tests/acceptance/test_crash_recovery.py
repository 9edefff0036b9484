"""Runs survive a worker killed mid-step, and a run cancelled before it starts never runs."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

import tests.workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.runs.execution import Result, execute_run
from conveyor.settings import Settings
from tests.fake_llm import FakeLlm
from tests.support import (
    ApiClient,
    finish_with_reaper,
    wait_for_run,
    wait_until,
    worker_subprocess,
)

LEASE_SECONDS = 5
USES_FAKE_LLM = True
# Short leases so a dead worker's run is taken over within seconds.
SETTINGS = {"run_lease_seconds": LEASE_SECONDS, "cancel_check_seconds": 0.1}


@pytest.fixture
def worker_process(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker in its own process, as in production, consuming the runs queue."""
    with worker_subprocess(settings, "runs") as process:
        yield process


def test_a_worker_killed_mid_workflow_is_replaced_and_every_step_completes_once(
    request: pytest.FixtureRequest,
    worker_process: subprocess.Popen[bytes],
    client: ApiClient,
    fake_llm: FakeLlm,
    celery_app: Celery,
) -> None:
    """kill -9 during step 2 of 3: a second worker resumes at step 2 and finishes the run."""
    accepted = client.post(
        "/api/agents/workflows/execute",
        json={
            "workflow_id": "llm_hold_llm",
            "inputs": {"server": fake_llm.url, "key": "k1"},
            "async": True,
        },
    )
    run_id = accepted.json()["workflow_run_id"]
    assert fake_llm.holding.wait(60), "the first worker never reached step 2"

    worker_process.send_signal(signal.SIGKILL)
    worker_process.wait(timeout=10)
    wait_until(lambda: fake_llm.abandoned["k1"] == 1, 10, "the held request being dropped")
    request.getfixturevalue("worker")  # a second worker, on every queue
    # Beat's reaper, fired by hand: once the lease expires it hands the run to the new worker.
    view = finish_with_reaper(client, celery_app, run_id, LEASE_SECONDS + 20)

    assert view["status"] == "completed", view
    assert view["attempts"] == 2
    assert fake_llm.completed == {"first k1": 1, "k1": 1, "last k1": 1}
    assert fake_llm.abandoned == {"k1": 1}
    assert [(s["name"], s["status"], s["attempt"]) for s in view["steps"]] == [
        ("first", "completed", 1),
        ("hold", "completed", 2),
        ("last", "completed", 1),
    ]


def test_a_run_cancelled_before_it_starts_never_runs(
    client: ApiClient, db: Database, settings: Settings, redis_url: str, fake_llm: FakeLlm
) -> None:
    accepted = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "write_brief", "inputs": {"topic": "never"}, "async": True},
    ).json()
    run_id = accepted["workflow_run_id"]

    cancelled = client.post(f"/api/runs/{run_id}/cancel").json()
    publisher = EventPublisher(redis_url)
    try:
        result = execute_run(db, publisher, settings, uuid.UUID(run_id))
    finally:
        publisher.close()

    assert cancelled["status"] == "cancelled"
    assert [s["status"] for s in cancelled["steps"]] == ["cancelled"] * 3
    assert result is Result.SKIPPED
    assert fake_llm.received.total() == 0
    assert wait_for_run(client, run_id)["status"] == "cancelled"
