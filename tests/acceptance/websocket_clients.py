"""Websocket clients for the realtime tests: a JSON-speaking socket and a RunDriver that moves a
run through its states as a worker would (the `connect` and `publisher` fixtures are in
conftest.py)."""

from __future__ import annotations

import json
import struct
import time
import uuid
from typing import Any
from urllib.parse import quote

import websocket

from conveyor import runs
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher, RunEvent
from conveyor.runs.checkpoints import complete_step, record_retry
from conveyor.runs.step_rows import CompletedStep
from tests.support import LiveServer

THREE_STEPS = [("fetch", "python"), ("think", "python"), ("write", "python")]
RECV_TIMEOUT = 10
# Seed 001's typed messages: a socket gets them for its own runs, notifications and activity
# from connect until its first subscribe. Native clients switch on `type` and ignore them; so do
# these tests, unless a socket is opened with typed=True (test_coming_from_pixelcraft.py).
SEED_TYPED = frozenset(
    {
        "workflow_status_update",
        "notification_created",
        "lead_created",
        "lead_analyzed",
        "message_created",
        "subscription_created",
        "subscription_updated",
    }
)


class Socket:
    """A websocket-client connection speaking the JSON protocol."""

    def __init__(self, url: str, *, typed: bool = False, **options: Any) -> None:
        self.ws = websocket.create_connection(url, timeout=RECV_TIMEOUT, **options)
        self.ignored = frozenset() if typed else SEED_TYPED

    def send(self, **message: Any) -> None:
        """Send one JSON message."""
        self.ws.send(json.dumps(message))

    def recv(self) -> dict[str, Any]:
        """The next JSON message (skipping ignored types); fails on a close frame."""
        while True:
            opcode, data = self.ws.recv_data()
            assert opcode == websocket.ABNF.OPCODE_TEXT, (opcode, data)
            message: dict[str, Any] = json.loads(data)
            if message.get("type") not in self.ignored:
                return message

    def events(self, count: int) -> list[dict[str, Any]]:
        """The next count messages, each an event."""
        received = [self.recv() for _ in range(count)]
        assert all(m["type"] == "event" for m in received), received
        return received

    def expect_quiet(self) -> None:
        """Nothing else is pending: a ping's pong is the next message."""
        self.send(type="ping")
        assert self.recv() == {"type": "pong"}

    def closed_with(self) -> tuple[int, str]:
        """Read until the server's close frame; its (code, reason)."""
        deadline = time.monotonic() + RECV_TIMEOUT
        while time.monotonic() < deadline:
            frame = self.ws.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                code = struct.unpack("!H", frame.data[:2])[0]
                return code, frame.data[2:].decode()
        raise AssertionError("no close frame")

    def close(self) -> None:
        """Close from the client side."""
        self.ws.close()


def ws_url(server: LiveServer, channel: str, token: str | None) -> str:
    """The websocket URL of channel, with `?token=` when token is given."""
    base = server.url.replace("http://", "ws://") + f"/api/ws/{channel}"
    return f"{base}?token={quote(token)}" if token else base


class RunDriver:
    """Moves a three-step run through the real state machine and publishes each change."""

    def __init__(self, db: Database, publisher: EventPublisher, user: uuid.UUID) -> None:
        self.db = db
        self.publisher = publisher
        created = runs.create_run(
            db,
            user_id=user,
            kind="workflow",
            workflow_id="three_steps",
            input={},
            metadata={},
            steps=THREE_STEPS,
        )
        assert created.event is not None
        self.run_id = created.id
        self.publish(created.event)  # seq 1
        self.claim: runs.ClaimedRun | None = None

    def publish(self, *events: RunEvent) -> None:
        self.publisher.publish(*events)

    def start(self) -> None:
        """Claim: seq 2."""
        claimed = runs.claim_run(self.db, self.run_id, lease_seconds=60)
        assert claimed is not None
        self.claim, event = claimed
        self.publish(event)

    def complete(self, position: int) -> None:
        """Complete step position and start the next: two events."""
        assert self.claim is not None
        events = complete_step(
            self.db,
            self.claim,
            CompletedStep(position, {"done": position}, None, None),
            next_step=(position + 1, THREE_STEPS[position + 1][0]),
            progress=(position + 1) / 3,
            lease_seconds=60,
        )
        assert events is not None
        self.publish(*events)

    def retry(self, position: int) -> None:
        """A failed attempt of step position: one event."""
        assert self.claim is not None
        event = record_retry(
            self.db,
            self.claim,
            position=position,
            error="flaky",
            error_code="FLAKY",
            retry_in=0.1,
            lease_seconds=60,
        )
        assert event is not None
        self.publish(event)

    def finish(self) -> None:
        """Complete the last step and the run: two events."""
        assert self.claim is not None
        last = CompletedStep(2, {"done": 2}, None, None)
        events = runs.finish_run(self.db, self.claim, runs.Outcome(output={}, last_step=last))
        assert events is not None
        self.publish(*events)


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages]
