"""Fan-out to many sockets: a client that stops reading is closed with 1013 and slows nobody
else; unsent status updates coalesce."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis

from conveyor.constants import run_topic, topic_channel
from conveyor.events.run_events import EventPublisher
from tests.acceptance.websocket_clients import RunDriver
from tests.support import LiveServer
from web.realtime import Delivery, Kind, Outbox

QUEUE_SIZE = 256
# A slow client has 10 s after its outbox overflowed to read up to the close frame.
SETTINGS = {"ws_queue_size": QUEUE_SIZE, "ws_send_grace_seconds": 10}
BURST = 1500
BATCH = 50  # published together; the next batch after PACE seconds
PACE = 0.01
# 12 MB in all: more than the server's send buffer (at most 4 MB here) and the slow client's
# receive buffer (made tiny) hold, plus its outbox.
PADDING = "x" * 8000


def probe(run_id: uuid.UUID, seq: int) -> str:
    """A published run event that never coalesces."""
    return json.dumps(
        {
            "type": "event",
            "channel": "workflows",
            "topic": run_topic(run_id),
            "seq": seq,
            "event": "step_completed",
            "data": {"padding": PADDING},
            "ts": datetime.now(UTC).isoformat(),
        }
    )


def publish_probes(
    client: redis.Redis, run_id: uuid.UUID, seqs: range, *, batch: int = BATCH, pace: float = PACE
) -> None:
    """Publish raw envelopes on the run's channel, `batch` at a time every `pace` seconds."""
    channel = topic_channel(run_topic(run_id))
    for first in range(seqs.start, seqs.stop, batch):
        with client.pipeline(transaction=False) as pipe:
            for seq in range(first, min(first + batch, seqs.stop)):
                pipe.publish(channel, probe(run_id, seq))
            pipe.execute()
        time.sleep(pace)


def test_a_client_that_stops_reading_is_closed_with_1013_and_others_get_everything(
    connect: Any,
    publisher: EventPublisher,
    live_server: LiveServer,
    clean_redis: redis.Redis,
) -> None:
    user = uuid.uuid4()
    run_id = RunDriver(live_server.app.extensions["conveyor.db"], publisher, user).run_id
    slow = connect("workflows", user, sockopt=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    slow.send(type="subscribe", topic=f"workflow_run:{run_id}")
    slow.recv()
    slow.recv()
    publish_probes(clean_redis, run_id, range(2, BURST + 2))

    # The slow socket's thread is now stuck writing or closing; another socket is unaffected.
    fast = connect("workflows", user)
    fast.send(type="subscribe", topic=f"workflow_run:{run_id}")
    fast.recv()
    fast.recv()
    started = time.monotonic()
    publish_probes(clean_redis, run_id, range(BURST + 2, BURST + 102))
    # The hub may still be handing out the tail of the first burst when `fast` subscribes; those
    # live events reach it too, in order, before the second burst.
    received = [fast.recv()["seq"]]
    while received[-1] < BURST + 101 and len(received) < BURST + 100:
        received.append(fast.recv()["seq"])

    assert received == list(range(received[0], BURST + 102))
    assert received[0] <= BURST + 2
    assert time.monotonic() - started < 2
    # The slow client reads its backlog, then the close frame queued after it.
    code, reason = slow.closed_with()
    assert code == 1013
    assert "since" in reason


def test_unsent_status_updates_coalesce_to_the_latest() -> None:
    """While a socket is behind, a newer `running` update replaces the unsent older one."""
    outbox = Outbox(8, threading.Event())
    key = "workflows|workflow_run:1"
    outbox.put(Delivery(key, Kind.MESSAGE, 1, "queued", coalesce_id="run1"))
    outbox.put(Delivery(key, Kind.MESSAGE, 2, "step", coalesce_id=None))
    outbox.put(Delivery(key, Kind.MESSAGE, 3, "running 50%", coalesce_id="run1"))
    outbox.put(Delivery(key, Kind.MESSAGE, 4, "running 90%", coalesce_id="run1"))
    outbox.put(Delivery(key, Kind.MESSAGE, 5, "completed", coalesce_id=None))

    assert [item.seq for item in outbox.take()] == [2, 4, 5]
    assert outbox.coalesced == 2


def test_an_outbox_overflow_drops_the_backlog_and_refuses_more() -> None:
    outbox = Outbox(8, threading.Event())
    accepted = [outbox.put(Delivery("k", Kind.MESSAGE, seq, "m")) for seq in range(10)]
    assert accepted == [True] * 8 + [False, False]
    assert outbox.overflowed_at is not None
    assert outbox.take() == []


def test_an_idle_socket_gets_live_events_written_by_the_hub_itself(
    connect: Any,
    publisher: EventPublisher,
    live_server: LiveServer,
    clean_redis: redis.Redis,
) -> None:
    """No wake-up of the socket's thread per message: the hub writes to an idle socket."""
    hub = live_server.app.extensions["conveyor.hub"]
    user = uuid.uuid4()
    run_id = RunDriver(live_server.app.extensions["conveyor.db"], publisher, user).run_id
    sock = connect("workflows", user)
    sock.send(type="subscribe", topic=f"workflow_run:{run_id}")
    sock.recv()
    sock.recv()
    for seq in range(2, 12):
        # Idle means its thread has let go of the socket after the previous write, too.
        time.sleep(0.05)
        clean_redis.publish(topic_channel(run_topic(run_id)), probe(run_id, seq))
        assert sock.recv()["seq"] == seq
    # Most, not all: on a loaded 2-core machine the socket's own thread may still hold the socket
    # when a message arrives, and then it writes that one itself (also correct, only slower).
    assert hub.written >= 5


def test_events_of_every_size_arrive_intact(
    connect: Any,
    publisher: EventPublisher,
    live_server: LiveServer,
    clean_redis: redis.Redis,
) -> None:
    """Frames the hub encodes itself: 7-bit, 16-bit and 64-bit payload lengths."""
    user = uuid.uuid4()
    run_id = RunDriver(live_server.app.extensions["conveyor.db"], publisher, user).run_id
    sock = connect("workflows", user)
    sock.send(type="subscribe", topic=f"workflow_run:{run_id}")
    sock.recv()
    sock.recv()
    for seq, size in enumerate((10, 200, 70_000), start=2):
        envelope = json.loads(probe(run_id, seq))
        envelope["data"] = {"padding": "y" * size}
        clean_redis.publish(topic_channel(run_topic(run_id)), json.dumps(envelope))
        received = sock.recv()
        assert (received["seq"], len(received["data"]["padding"])) == (seq, size)
