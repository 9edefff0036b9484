"""A client that stops reading altogether is cut off, so its socket's thread is not held
forever."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

import redis

from conveyor.events.run_events import EventPublisher
from tests.acceptance.test_websockets_fanout import BURST, publish_probes
from tests.acceptance.websocket_clients import RunDriver
from tests.support import LiveServer

SETTINGS = {"ws_queue_size": 64, "ws_send_grace_seconds": 0.5}


def test_a_socket_stuck_writing_after_an_overflow_is_cut_off(
    connect: Any,
    publisher: EventPublisher,
    live_server: LiveServer,
    clean_redis: redis.Redis,
) -> None:
    hub = live_server.app.extensions["conveyor.hub"]
    user = uuid.uuid4()
    run_id = RunDriver(live_server.app.extensions["conveyor.db"], publisher, user).run_id
    stuck = connect("workflows", user, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    stuck.send(type="subscribe", topic=f"workflow_run:{run_id}")
    stuck.recv()
    stuck.recv()
    assert hub.socket_count() == 1

    # Slowly enough that the socket's thread keeps up until the socket buffers are full and it
    # blocks writing; only then does its outbox overflow.
    publish_probes(clean_redis, run_id, range(2, BURST + 2), batch=5, pace=0.005)
    deadline = time.monotonic() + 10
    while hub.socket_count() and time.monotonic() < deadline:
        time.sleep(0.05)

    assert hub.socket_count() == 0
