"""The production web process (`conveyor run`'s gunicorn gthread command) serves websockets:
sockets spread over both workers each get a run's events from their worker's hub."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conveyor.cli import gunicorn_command
from conveyor.db import Database
from conveyor.events import EventPublisher
from conveyor.services import free_port
from conveyor.settings import Settings
from tests.acceptance.test_websockets import RunDriver, Socket, publisher  # noqa: F401
from tests.support import API_SECRET, JWT_SECRET, token_for

STARTUP_SECONDS = 30
SOCKETS = 6


@pytest.fixture
def gunicorn(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """gunicorn with 2 workers on a loopback port; its base URL. Workers take connections
    unevenly, so each has threads for every socket of the test, as WEB_THREADS is sized."""
    assert settings.database_url is not None
    assert settings.redis_url is not None
    port = free_port()
    env = dict(
        os.environ,
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        SUPABASE_JWT_SECRET=JWT_SECRET,
        API_JWT_SECRET=API_SECRET,
        CONVEYOR_DATA_DIR=str(tmp_path / "data"),
        CONVEYOR_ENV="development",
        LOG_LEVEL="WARNING",
    )
    command = gunicorn_command(
        sys.executable, host="127.0.0.1", port=port, workers=2, threads=SOCKETS + 2
    )
    process = subprocess.Popen(shlex.split(command), env=env, cwd=Path(__file__).parents[2])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                if requests.get(f"{url}/api/health", timeout=5).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or a worker still importing the app
            assert time.monotonic() < deadline, "gunicorn did not answer in time"
            assert process.poll() is None, "gunicorn exited"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_gunicorn_gthread_serves_a_runs_events_to_every_socket(
    gunicorn: str,
    db: Database,
    publisher: EventPublisher,  # noqa: F811
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
