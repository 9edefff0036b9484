"""SIGTERM to `conveyor run`'s gunicorn lets a request in flight finish, closes open websockets
with 1001, then the server exits."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import websocket

from conveyor.db import Database
from conveyor.settings import Settings
from tests.support import ApiClient, gunicorn_process, token_for

# An `execute` without a worker waits this long for the run, then answers 202.
WAIT_SECONDS = 3
GRACEFUL_TIMEOUT_SECONDS = 20  # conveyor.cli.main.gunicorn_command's --graceful-timeout


@pytest.fixture
def gunicorn(settings: Settings, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`conveyor run`'s gunicorn command on a loopback port: the process and its base URL."""
    with gunicorn_process(
        settings, tmp_path / "data", workers=1, threads=4, WORKFLOW_WAIT_SECONDS=str(WAIT_SECONDS)
    ) as served:
        yield served


def wait_until_a_run_exists(db: Database) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with db.transaction() as conn:
            if conn.execute("select 1 from workflow_runs").fetchone():
                return
        time.sleep(0.05)
    raise AssertionError("the request never created its run")


def test_sigterm_lets_a_request_in_flight_finish_then_exits(
    gunicorn: tuple[subprocess.Popen[bytes], str], user_id: uuid.UUID, db: Database
) -> None:
    process, url = gunicorn
    client = ApiClient(url, token_for(user_id))
    answers: list[requests.Response] = []
    waiting = threading.Thread(
        target=lambda: answers.append(
            client.post(
                "/api/agents/workflows/execute",
                json={"workflow_id": "research_brief", "inputs": {"topic": "graceful"}},
                timeout=30,
            )
        )
    )
    waiting.start()
    wait_until_a_run_exists(db)  # the request now waits for its run (no worker here)

    process.send_signal(signal.SIGTERM)
    waiting.join(timeout=30)

    assert process.wait(timeout=25) == 0
    assert [a.status_code for a in answers] == [202]
    assert answers[0].json()["status"] == "queued"


def test_sigterm_closes_open_websockets_with_going_away_and_exits_promptly(
    gunicorn: tuple[subprocess.Popen[bytes], str], user_id: uuid.UUID
) -> None:
    process, url = gunicorn
    ws = websocket.create_connection(
        f"{url.replace('http', 'ws', 1)}/api/ws/workflows?token={token_for(user_id)}", timeout=10
    )
    ws.send(json.dumps({"type": "subscribe", "topic": f"user:{user_id}"}))
    assert json.loads(ws.recv())["type"] == "subscribed"
    stopped_at = time.monotonic()

    process.send_signal(signal.SIGTERM)
    frame = ws.recv_frame()
    while frame.opcode != websocket.ABNF.OPCODE_CLOSE:
        frame = ws.recv_frame()

    ws.close(timeout=2)  # answered, as a browser answers a close frame

    assert struct.unpack("!H", frame.data[:2])[0] == 1001
    assert "reconnect" in frame.data[2:].decode()
    assert process.wait(timeout=GRACEFUL_TIMEOUT_SECONDS + 5) == 0
    assert time.monotonic() - stopped_at < GRACEFUL_TIMEOUT_SECONDS / 2  # not held open to the end
