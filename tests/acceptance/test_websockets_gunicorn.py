"""The production web process (`conveyor run`'s gunicorn gthread command) serves websockets:
sockets spread over both workers each get a run's events from their worker's hub."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.db import Database
from conveyor.events import EventPublisher
from conveyor.settings import Settings
from tests.acceptance.test_websockets import RunDriver, Socket, publisher  # noqa: F401
from tests.support import gunicorn_process, token_for

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
