"""WORKER_METRICS_PORT: a worker serves its own Prometheus samples, its pool children's included,
at `:<port>/metrics`, for a host with no web process beside it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from celery import Celery
from celery.contrib.testing.worker import start_worker
from prometheus_client.parser import text_string_to_metric_families

from conveyor.cli.services import free_port
from conveyor.settings import Settings
from tests.support import (
    REPO,
    ApiClient,
    LiveServer,
    close_worker_resources,
    make_settings,
    token_for,
    wait_for_run,
    wait_until,
    worker_args,
    worker_env,
)
from worker.celery_app import create_celery
from worker.metrics_http import MetricsServer

FINISHED = "conveyor_runs_finished_total"
# `celery -A worker.app worker …` with the bootstep registered as worker/celery_app.py registers it
# (test_the_celery_app_registers_the_metrics_server checks that it does).
WORKER_WITH_METRICS = (
    "import sys; from worker.app import app; from worker.metrics_http import MetricsServer; "
    "app.steps['worker'].add(MetricsServer); app.worker_main(sys.argv[1:])"
)


@pytest.fixture
def settings(
    database_url: str, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> Settings:
    """The conftest's settings, with the worker's metrics on a free port."""
    return make_settings(
        database_url, redis_url, tmp_path / "data", worker_metrics_port=free_port()
    )


@pytest.fixture
def celery_app(settings: Settings) -> Celery:
    """The worker's Celery app with the metrics bootstep, before the `worker` fixture starts it."""
    app = create_celery(settings)
    app.steps["worker"].add(MetricsServer)
    return app


def scrape(port: int, **headers: str) -> requests.Response:
    """GET the worker's /metrics."""
    return requests.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=5)


def finished(port: int, workflow: str, status: str = "completed") -> float:
    """conveyor_runs_finished{workflow, status} at the worker's endpoint (0 if absent)."""
    response = scrape(port)
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == FINISHED and sample.labels == {
                "workflow": workflow,
                "status": status,
            }:
                return sample.value
    return 0.0


def submit_echo(client: ApiClient) -> str:
    """Submit an echo run; its id."""
    response = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {"n": 1}})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["request_id"]
    return run_id


def test_the_celery_app_registers_the_metrics_server(settings: Settings) -> None:
    """`celery -A worker.app worker` serves WORKER_METRICS_PORT (the hookup in create_celery)."""
    assert MetricsServer in create_celery(settings).steps["worker"]


def test_worker_reports_a_run_it_finished_at_its_metrics_port(
    settings: Settings, worker: object, client: ApiClient
) -> None:
    assert settings.worker_metrics_port is not None
    before = finished(settings.worker_metrics_port, "echo")

    run = wait_for_run(client, submit_echo(client))

    assert run["status"] == "completed"
    assert finished(settings.worker_metrics_port, "echo") == before + 1


def test_worker_metrics_need_the_metrics_token_when_one_is_set(
    database_url: str, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    port = free_port()
    settings = make_settings(
        database_url, redis_url, tmp_path / "data", worker_metrics_port=port, metrics_token="s3cret"
    )
    app = create_celery(settings)
    app.steps["worker"].add(MetricsServer)
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        refused = scrape(port)
        wrong = scrape(port, Authorization="Bearer nope")
        allowed = scrape(port, Authorization="Bearer s3cret")
    close_worker_resources(app)

    assert refused.status_code == 401
    assert refused.json()["code"] == "UNAUTHORIZED"
    assert wrong.status_code == 401
    assert allowed.status_code == 200
    assert "# TYPE" in allowed.text


@pytest.fixture
def prefork_worker(settings: Settings, tmp_path: Path) -> Iterator[int]:
    """A prefork worker (2 children) in its own process on the runs queue, writing its samples to
    a fresh PROMETHEUS_MULTIPROC_DIR, as a worker container runs; yields its metrics port."""
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = worker_env(
        settings, WORKER_METRICS_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
    )
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER_WITH_METRICS, *worker_args("runs", concurrency=2)],
        cwd=REPO, env={**os.environ, **env},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: listening(port) or process.poll() is not None, 60, "worker metrics port")
        assert process.poll() is None, "the worker exited"
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def listening(port: int) -> bool:
    """Whether the metrics endpoint answers."""
    try:
        return scrape(port).status_code == 200
    except requests.ConnectionError:
        return False


def test_prefork_worker_reports_runs_its_pool_children_finished(
    settings: Settings, prefork_worker: int
) -> None:
    with LiveServer(settings) as server:
        client = ApiClient(server.url, token_for(uuid.uuid4()))
        run_ids = [submit_echo(client) for _ in range(3)]
        runs = [wait_for_run(client, run_id, timeout=30) for run_id in run_ids]

    assert [run["status"] for run in runs] == ["completed"] * 3
    # The main process runs no task: these samples come from the children's files.
    assert finished(prefork_worker, "echo") == 3
