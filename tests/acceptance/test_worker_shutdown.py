"""SIGTERM stops a worker within a bound and loses no run: a run that can finish within
WORKER_DRAIN_SECONDS finishes; one that cannot goes back to the queue at once and another worker
resumes it from its last checkpoint, without waiting for its lease to expire."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

import tests.workflows_for_tests  # noqa: F401 - registers the workflows used here
from conveyor.constants import TASK_EXECUTE_RUN
from conveyor.db import Database
from conveyor.runs import reaper
from conveyor.settings import Settings
from tests.fake_llm import FakeLlm
from tests.support import ApiClient, celery_process, wait_for_run, worker_args, worker_env

USES_FAKE_LLM = True
# The default lease (300 s) stays: a handed-back run must not need it to expire.
SETTINGS = {"cancel_check_seconds": 0.1}
EXIT_SECONDS = 15


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[Any]:
    """Start workers on the runs queue (solo, or prefork with concurrency > 1) with extra
    environment; killed if still alive at the end. Their logs (INFO) are printed at teardown,
    which pytest shows only when the test failed."""
    started: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def start(concurrency: int = 1, **env: str) -> subprocess.Popen[bytes]:
        args = worker_args("runs", concurrency=concurrency, loglevel="INFO")
        logs.append(tmp_path / f"worker-{len(logs) + 1}.log")
        process = celery_process(
            *args, env=worker_env(settings, LOG_LEVEL="INFO", **env), log=logs[-1]
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
    for log in logs:
        print(f"--- {log.name} (last 20,000 characters)\n{log.read_text()[-20_000:]}")


def submit(client: ApiClient, workflow_id: str, inputs: dict[str, Any]) -> str:
    accepted = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": workflow_id, "inputs": inputs, "async": True},
    )
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["workflow_run_id"])


@pytest.mark.parametrize("concurrency", [1, 2], ids=["solo", "prefork"])
def test_a_run_whose_step_will_not_stop_is_queued_for_the_reaper_and_resumed_once(
    start_worker: Any,
    client: ApiClient,
    fake_llm: FakeLlm,
    celery_app: Celery,
    clean_redis: redis.Redis,
    db: Database,
    concurrency: int,
) -> None:
    """Step 2 of 3 hangs in an LLM call that cannot be interrupted: SIGTERM queues the run again
    but leaves publishing it to the reaper, so no worker starts the step beside the thread still
    in it; once the stopping worker exited, a second worker does steps 2 and 3."""
    first = start_worker(concurrency, WORKER_DRAIN_SECONDS="1")
    run_id = submit(client, "llm_hold_llm", {"server": fake_llm.url, "key": "k1"})
    assert fake_llm.holding.wait(60), "the first worker never reached step 2"

    first.send_signal(signal.SIGTERM)

    assert first.wait(timeout=EXIT_SECONDS) == 0
    assert client.get(f"/api/runs/{run_id}").json()["status"] == "queued"
    assert clean_redis.llen("runs") == 0  # queued in Postgres, not published
    start_worker()
    for lost in reaper.runs_to_republish(db, older_than_seconds=0):  # the reaper's next tick
        celery_app.send_task(TASK_EXECUTE_RUN, args=[str(lost)])
    view = wait_for_run(client, run_id, timeout=20)
    assert view["status"] == "completed", view
    assert view["attempts"] == 2
    assert fake_llm.completed == {"first k1": 1, "k1": 1, "last k1": 1}
    # The interrupted attempt of `hold` still counts: it may have been running until the exit.
    assert [(s["name"], s["status"], s["attempt"]) for s in view["steps"]] == [
        ("first", "completed", 1),
        ("hold", "completed", 2),
        ("last", "completed", 1),
    ]


def test_a_run_that_ends_within_the_drain_period_finishes_on_the_stopping_worker(
    start_worker: Any, client: ApiClient, fake_llm: FakeLlm
) -> None:
    """A run that ends within WORKER_DRAIN_SECONDS completes where it started, once."""
    worker = start_worker(WORKER_DRAIN_SECONDS="30")
    run_id = submit(client, "wait_then_call", {"seconds": 2})
    wait_for_run(client, run_id, until=frozenset({"running"}), timeout=30)

    worker.send_signal(signal.SIGTERM)

    assert worker.wait(timeout=EXIT_SECONDS) == 0
    view = client.get(f"/api/runs/{run_id}").json()
    assert view["status"] == "completed", view
    assert view["attempts"] == 1
    assert fake_llm.completed == {"after the wait": 1}


def test_a_run_whose_step_stops_when_asked_is_published_again_at_once(
    start_worker: Any, client: ApiClient, fake_llm: FakeLlm
) -> None:
    """A cooperative step stops when the drain period ends: the run is handed back and published
    at once, and a second worker finishes it without the reaper."""
    first = start_worker(WORKER_DRAIN_SECONDS="1")
    run_id = submit(client, "wait_then_call", {"seconds": 30})
    wait_for_run(client, run_id, until=frozenset({"running"}), timeout=30)

    first.send_signal(signal.SIGTERM)

    assert first.wait(timeout=EXIT_SECONDS) == 0
    start_worker()  # no reaper runs here: the run must already be back on the queue
    view = wait_for_run(client, run_id, until=frozenset({"running"}), timeout=20)
    assert view["attempts"] == 2
    # The interrupted attempt was given back, not counted against the step's limit.
    wait_step = view["steps"][0]
    assert (wait_step["name"], wait_step["status"], wait_step["attempt"]) == ("wait", "running", 1)
