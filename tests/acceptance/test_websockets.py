"""`/api/ws/workflows` with a real websocket client on a loopback port: authentication, topics,
a run's events in order, and resuming with `since` without a gap or a duplicate."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from conveyor import runs
from conveyor.auth.tenancy import grant_admin
from conveyor.db import Database
from conveyor.events.run_events import EventPublisher
from tests.acceptance.websocket_clients import (
    RunDriver,
    Socket,
    seqs,
    ws_url,
)
from tests.support import ApiClient, LiveServer, token_for, wait_for_run


def test_a_missing_token_closes_with_1008(connect: Any, live_server: LiveServer) -> None:
    sock = Socket(ws_url(live_server, "workflows", None))
    try:
        code, reason = sock.closed_with()
    finally:
        sock.close()
    assert code == 1008
    assert "Authorization" in reason


@pytest.mark.parametrize("channel", ["workflows", "notifications", "analytics"])
def test_an_invalid_token_closes_with_1008(connect: Any, channel: str) -> None:
    sock = connect(channel, token="not.a.jwt")
    assert sock.closed_with() == (1008, "INVALID_TOKEN: The token is not a well-formed JWT.")


def test_an_expired_token_closes_with_1008(connect: Any) -> None:
    sock = connect("workflows", token=token_for(uuid.uuid4(), ttl_seconds=-60))
    code, reason = sock.closed_with()
    assert (code, reason.split(":")[0]) == (1008, "TOKEN_EXPIRED")


def test_a_bearer_header_authenticates_too(live_server: LiveServer, connect: Any) -> None:
    token = token_for(uuid.uuid4())
    sock = Socket(ws_url(live_server, "workflows", None), header=[f"Authorization: Bearer {token}"])
    try:
        sock.send(type="ping")
        assert sock.recv() == {"type": "pong"}
    finally:
        sock.close()


def test_a_token_expiring_mid_connection_closes_with_4001(connect: Any) -> None:
    """The client is told to refresh its token, distinctly from a refused one."""
    sock = connect("workflows", token=token_for(uuid.uuid4(), ttl_seconds=2))
    sock.expect_quiet()
    started = time.monotonic()
    code, reason = sock.closed_with()
    assert code == 4001
    assert "expired" in reason
    assert time.monotonic() - started < 5


def test_subscribing_sends_the_run_snapshot_then_live_events_in_order(
    connect: Any, db: Database, publisher: EventPublisher, user_id: uuid.UUID
) -> None:
    driver = RunDriver(db, publisher, user_id)
    driver.start()
    sock = connect("workflows", user_id)

    sock.send(type="subscribe", topic=f"workflow_run:{driver.run_id}")
    assert sock.recv() == {"type": "subscribed", "topic": f"workflow_run:{driver.run_id}"}
    snapshot = sock.recv()
    driver.complete(0)
    driver.complete(1)
    driver.finish()
    live = sock.events(6)

    assert (snapshot["seq"], snapshot["snapshot"], snapshot["data"]["status"]) == (
        2,
        True,
        "running",
    )
    assert seqs(live) == [3, 4, 5, 6, 7, 8]
    assert [m["event"] for m in live] == [
        "step_completed",
        "workflow_status_update",
        "step_completed",
        "workflow_status_update",
        "step_completed",
        "workflow_status_update",
    ]
    assert live[-1]["data"]["status"] == "completed"
    assert live[-1]["topic"] == f"workflow_run:{driver.run_id}"
    assert live[-1]["channel"] == "workflows"
    assert set(live[-1]["data"]) == {
        "workflow_run_id",
        "workflow_id",
        "user_id",
        "status",
        "step",
        "progress",
        "updated_at",
    }
    sock.expect_quiet()


def test_since_replays_stored_events_then_switches_to_live_without_a_gap(
    connect: Any, db: Database, publisher: EventPublisher, user_id: uuid.UUID
) -> None:
    driver = RunDriver(db, publisher, user_id)
    driver.start()
    driver.complete(0)
    sock = connect("workflows", user_id)

    sock.send(type="subscribe", topic=f"workflow_run:{driver.run_id}", since=1)
    assert sock.recv()["type"] == "subscribed"
    replayed = sock.events(3)
    driver.retry(1)
    driver.complete(1)
    live = sock.events(3)

    assert seqs(replayed) == [2, 3, 4]
    assert seqs(live) == [5, 6, 7]
    assert live[0]["event"] == "step_retrying"
    sock.expect_quiet()


def test_reconnecting_with_since_delivers_every_missed_event_exactly_once(
    connect: Any, db: Database, publisher: EventPublisher, user_id: uuid.UUID
) -> None:
    """Disconnect mid-run; events published while away arrive on reconnect, once each."""
    driver = RunDriver(db, publisher, user_id)
    first = connect("workflows", user_id)
    first.send(type="subscribe", topic=f"workflow_run:{driver.run_id}", since=0)
    first.recv()
    driver.start()
    driver.complete(0)
    before = first.events(4)
    first.close()

    driver.complete(1)
    driver.retry(2)
    second = connect("workflows", user_id)
    second.send(type="subscribe", topic=f"workflow_run:{driver.run_id}", since=before[-1]["seq"])
    second.recv()
    caught_up = second.events(3)
    driver.finish()
    after = second.events(2)

    delivered = seqs(before) + seqs(caught_up) + seqs(after)
    assert delivered == list(range(1, 10))
    assert after[-1]["data"]["status"] == "completed"
    second.expect_quiet()


def test_a_worker_run_streams_to_a_subscriber_as_the_rest_log_records_it(
    worker: Any, connect: Any, client: ApiClient, user_id: uuid.UUID
) -> None:
    """End to end: submit, subscribe with since=0, and the socket delivers the run's log."""
    response = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {"x": 1}})
    assert response.status_code == 202, response.text
    run_id = response.json()["request_id"]
    sock = connect("workflows", user_id)
    sock.send(type="subscribe", topic=f"workflow_run:{run_id}", since=0)
    assert sock.recv()["type"] == "subscribed"

    received: list[dict[str, Any]] = []
    while not received or received[-1]["data"].get("status") not in ("completed", "failed"):
        received.append(sock.recv())

    wait_for_run(client, run_id)
    logged = client.get(f"/api/runs/{run_id}/events").json()["events"]
    assert received == logged
    assert seqs(received) == list(range(1, len(received) + 1))


def test_another_users_run_is_refused_and_the_connection_stays_open(
    connect: Any, db: Database, publisher: EventPublisher
) -> None:
    driver = RunDriver(db, publisher, uuid.uuid4())
    sock = connect("workflows", uuid.uuid4())
    topic = f"workflow_run:{driver.run_id}"

    for since in (None, 0):
        sock.send(type="subscribe", topic=topic, **({} if since is None else {"since": since}))
        refusal = sock.recv()
        assert (refusal["type"], refusal["code"], refusal["topic"]) == (
            "error",
            "UNAUTHORIZED",
            topic,
        )
    driver.start()
    sock.expect_quiet()


def test_an_admin_may_follow_anyones_run(
    connect: Any, db: Database, publisher: EventPublisher
) -> None:
    driver = RunDriver(db, publisher, uuid.uuid4())
    admin = uuid.uuid4()
    grant_admin(db, admin)
    sock = connect("workflows", admin)
    sock.send(type="subscribe", topic=f"workflow_run:{driver.run_id}", since=0)
    assert sock.recv()["type"] == "subscribed"
    assert seqs(sock.events(1)) == [1]


def test_a_user_topic_streams_the_status_of_that_users_runs(
    connect: Any, db: Database, publisher: EventPublisher, user_id: uuid.UUID
) -> None:
    queued = RunDriver(db, publisher, user_id)
    sock = connect("workflows", user_id)
    sock.send(type="subscribe", topic=f"user:{user_id}")
    assert sock.recv() == {"type": "subscribed", "topic": f"user:{user_id}"}
    snapshot = sock.recv()
    queued.start()
    live = sock.recv()

    assert (snapshot["snapshot"], snapshot["data"]["status"]) == (True, "queued")
    assert (live["topic"], live["data"]["status"]) == (f"workflow_run:{queued.run_id}", "running")


def test_someone_elses_user_topic_is_refused(connect: Any) -> None:
    sock = connect("workflows", uuid.uuid4())
    sock.send(type="subscribe", topic=f"user:{uuid.uuid4()}")
    assert sock.recv()["code"] == "UNAUTHORIZED"


@pytest.mark.parametrize(
    "topic", ["runs", "workflow_run:not-a-uuid", "workflow_run:", "lead_trends", "user"]
)
def test_an_unknown_topic_is_an_invalid_topic_error(connect: Any, topic: str) -> None:
    sock = connect("workflows")
    sock.send(type="subscribe", topic=topic)
    error = sock.recv()
    assert (error["type"], error["code"]) == ("error", "INVALID_TOPIC")
    sock.expect_quiet()


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"type": "dance"}',
        '{"topic": "user:1"}',
        '{"type": "subscribe"}',
        '{"type": "subscribe", "topic": "workflow_run:x", "since": -1}',
    ],
)
def test_a_malformed_message_is_a_bad_request_error(connect: Any, raw: str) -> None:
    sock = connect("workflows")
    sock.ws.send(raw)
    error = sock.recv()
    assert (error["type"], error["code"]) == ("error", "BAD_REQUEST")
    sock.expect_quiet()


def test_heartbeat_is_acknowledged_with_the_servers_time(connect: Any) -> None:
    sock = connect("workflows")
    sock.send(type="heartbeat", timestamp=1234)
    ack = sock.recv()
    assert (ack["type"], ack["timestamp"]) == ("heartbeat_ack", 1234)
    assert "server_time" in ack


def test_unsubscribing_stops_a_topics_events(
    connect: Any, db: Database, publisher: EventPublisher, user_id: uuid.UUID
) -> None:
    driver = RunDriver(db, publisher, user_id)
    sock = connect("workflows", user_id)
    topic = f"workflow_run:{driver.run_id}"
    sock.send(type="subscribe", topic=topic)
    sock.recv()
    sock.recv()
    sock.send(type="unsubscribe", topic=topic)
    assert sock.recv() == {"type": "unsubscribed", "topic": topic}
    driver.start()
    sock.expect_quiet()


def test_events_lost_while_the_hub_was_away_from_redis_are_replayed(
    connect: Any, db: Database, publisher: EventPublisher, user_id: uuid.UUID, clean_redis: Any
) -> None:
    """A publish that never reached the hub (Redis restarted, say) is read from Postgres when the
    hub's subscription comes back."""
    driver = RunDriver(db, publisher, user_id)
    sock = connect("workflows", user_id)
    sock.send(type="subscribe", topic=f"workflow_run:{driver.run_id}", since=0)
    sock.recv()
    assert seqs(sock.events(1)) == [1]
    unpublished = runs.claim_run(db, driver.run_id, lease_seconds=60)
    assert unpublished is not None  # its event is committed but never published

    clean_redis.client_kill_filter(_type="pubsub")
    resynced = sock.events(1)

    assert seqs(resynced) == [2]
    assert resynced[0]["data"]["status"] == "running"


def test_the_server_declines_permessage_deflate(live_server: LiveServer, connect: Any) -> None:
    """Compressing every message for every socket costs more than it saves (docs/realtime.md)."""
    sock = Socket(
        ws_url(live_server, "workflows", token_for(uuid.uuid4())),
        header=["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
    )
    try:
        assert "sec-websocket-extensions" not in (sock.ws.getheaders() or {})
        sock.expect_quiet()
    finally:
        sock.close()
