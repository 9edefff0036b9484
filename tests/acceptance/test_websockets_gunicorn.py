"""The production web process (`conveyor run`'s gunicorn gthread command) serves websockets:
sockets spread over both workers each get a run's events from their worker's hub."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from conveyor.settings import Settings
from tests.acceptance.websocket_clients import RunDriver, Socket
from tests.support import gunicorn_process, token_for, wait_until

SOCKETS = 6


@pytest.fixture
def gunicorn(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """gunicorn with 2 workers on a loopback port; its base URL. Workers take connections
    unevenly, so each has threads for every socket of the test, as WEB_THREADS is sized."""
    with gunicorn_process(settings, tmp_path / "data", workers=2, threads=SOCKETS + 2) as (_, url):
        yield url


def test_gunicorn_gthread_serves_a_runs_events_to_every_socket(
    gunicorn: str,
    db: Database,
    publisher: EventPublisher,
) -> None:
    user = uuid.uuid4()
    driver = RunDriver(db, publisher, user)
    url = gunicorn.replace("http://", "ws://") + f"/api/ws/workflows?token={token_for(user)}"
    sockets = [Socket(url) for _ in range(SOCKETS)]
    try:
        for sock in sockets:
            sock.send(type="subscribe", topic=f"workflow_run:{driver.run_id}")
            assert sock.recv()["type"] == "subscribed"
            assert sock.recv()["seq"] == 1
        driver.start()
        driver.complete(0)
        for sock in sockets:
            assert [sock.recv()["seq"] for _ in range(3)] == [2, 3, 4]
    finally:
        for sock in sockets:
            sock.close()


def open_workflow_sockets(base_url: str) -> float:
    """conveyor_websocket_connections{channel="workflows"} as a scrape of base_url reports it."""
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "conveyor_websocket_connections"
        and sample.labels.get("channel") == "workflows"
    )


def web_workers(master_pid: int) -> list[int]:
    """The pids of gunicorn's worker processes (the master's children)."""
    with open(f"/proc/{master_pid}/task/{master_pid}/children") as children:
        return [int(pid) for pid in children.read().split()]


def test_a_killed_web_workers_open_websockets_leave_the_gauge(
    settings: Settings, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with gunicorn_process(
        settings, tmp_path / "data", workers=1, threads=4,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    ) as (master, url):  # fmt: skip
        (worker,) = web_workers(master.pid)
        ws_url = (
            url.replace("http://", "ws://") + f"/api/ws/workflows?token={token_for(uuid.uuid4())}"
        )
        sock = Socket(ws_url)
        wait_until(lambda: open_workflow_sockets(url) == 1, 10, "the socket counted")

        os.kill(worker, signal.SIGKILL)  # no chance to count its socket out
        wait_until(lambda: web_workers(master.pid) not in ([], [worker]), 30, "a new worker")
        wait_until(lambda: requests.get(f"{url}/api/health", timeout=5).ok, 30, "health")
        sock.close()

        assert open_workflow_sockets(url) == 0
