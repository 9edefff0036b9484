"""Redis down at submit loses nothing: the run waits in Postgres and the reaper publishes it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker

from conveyor.cli.services import EmbeddedRedis, free_port
from conveyor.constants import TASK_REQUEUE_STALE_RUNS
from tests.support import (
    ApiClient,
    LiveServer,
    close_worker_resources,
    make_settings,
    token_for,
    wait_for_run,
)
from worker.celery_app import create_celery


@pytest.fixture
def stopped_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, not yet started, on a port nothing listens on."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), persist=False)
    yield server
    server.stop()


def test_run_submitted_while_redis_is_down_completes_once_it_is_back(
    database_url: str, stopped_redis: EmbeddedRedis, tmp_path: Path, user_id: object
) -> None:
    settings = make_settings(database_url, stopped_redis.url, tmp_path / "data")
    with LiveServer(settings) as server:
        client = ApiClient(server.url, token_for(user_id))  # type: ignore[arg-type]

        started = time.monotonic()
        response = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {"n": 1}})
        answered_in = time.monotonic() - started

        assert response.status_code == 202, response.text
        assert answered_in < 5, f"submit took {answered_in:.1f} s with Redis down"
        run_id = response.json()["request_id"]
        assert client.get(f"/api/runs/{run_id}").json()["status"] == "queued"

        health = client.get("/api/health")
        assert health.status_code == 503
        assert health.json()["redis"] == "down"
        assert health.json()["code"] == "SERVICE_UNAVAILABLE"

        stopped_redis.start()
        app = create_celery(settings)
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
            # What beat does every 30 s, with the age threshold lowered so the test need not wait.
            app.send_task(TASK_REQUEUE_STALE_RUNS, kwargs={"older_than_seconds": 0})
            run = wait_for_run(client, run_id)
        close_worker_resources(app)

    assert run["status"] == "completed"
    assert run["output"] == {"n": 1}
    assert run["attempts"] == 1
