"""`/api/notifications` and `/api/ws/notifications`: what runs, quotas and billing tell a user,
listed, marked read, and pushed live or replayed with `since`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from conveyor.auth.tenancy import grant_admin
from conveyor.db import Database
from conveyor.events import notifications
from conveyor.events.notifications import PAYMENT_FAILED, notify, publish_notifications
from conveyor.events.run_events import EventPublisher
from tests.support import ApiClient, wait_for_run

ClientFactory = Callable[..., ApiClient]


def bill(db: Database, user: uuid.UUID, title: str = "Payment failed", **kwargs: Any) -> Any:
    """What billing does: notify in its transaction, publish after commit."""
    with db.transaction() as conn:
        return notify(conn, user, PAYMENT_FAILED, "error", title, "Update your card.", **kwargs)


def test_a_completed_run_notifies_its_owner(worker: Any, client: ApiClient) -> None:
    run_id = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {}}).json()[
        "request_id"
    ]
    wait_for_run(client, run_id)

    body = client.get("/api/notifications").json()

    assert body["unread_count"] == 1
    [note] = body["notifications"]
    assert (note["notification_type"], note["severity"], note["read"]) == (
        "run_completed",
        "success",
        False,
    )
    assert note["metadata"]["workflow_run_id"] == run_id
    assert note["action_url"] == f"/api/runs/{run_id}"


def test_unread_filter_mark_read_and_read_all(
    db: Database, client: ApiClient, user_id: uuid.UUID
) -> None:
    second = [bill(db, user_id, f"n{i}") for i in range(3)][1]

    marked = client.post(f"/api/notifications/{second.id}/read")
    unread = client.get("/api/notifications", params={"unread": "true"}).json()
    all_read = client.post("/api/notifications/read-all").json()
    after = client.get("/api/notifications").json()

    assert (marked.status_code, marked.json()["read"]) == (200, True)
    assert [n["title"] for n in unread["notifications"]] == ["n2", "n0"]
    assert unread["unread_count"] == 2
    assert all_read == {"marked": 2}
    assert after["unread_count"] == 0
    assert [n["read"] for n in after["notifications"]] == [True, True, True]


def test_notifications_page_newest_first_with_a_cursor(
    db: Database, client: ApiClient, user_id: uuid.UUID
) -> None:
    for i in range(5):
        bill(db, user_id, f"n{i}")
    page1 = client.get("/api/notifications", params={"limit": 3}).json()
    page2 = client.get(
        "/api/notifications", params={"limit": 3, "cursor": page1["next_cursor"]}
    ).json()
    assert [n["title"] for n in page1["notifications"] + page2["notifications"]] == [
        "n4",
        "n3",
        "n2",
        "n1",
        "n0",
    ]
    assert page2["next_cursor"] is None


def test_someone_elses_notification_is_not_found(db: Database, make_client: ClientFactory) -> None:
    note = bill(db, uuid.uuid4())
    stranger = make_client()
    for path in (f"/api/notifications/{note.id}/read", "/api/notifications/not-a-uuid/read"):
        response = stranger.post(path)
        assert (response.status_code, response.json()["code"]) == (404, "NOTIFICATION_NOT_FOUND")
    assert stranger.post("/api/notifications/read-all").json() == {"marked": 0}


def test_a_bad_unread_value_is_a_400(client: ApiClient) -> None:
    response = client.get("/api/notifications", params={"unread": "maybe"})
    assert (response.status_code, response.json()["code"]) == (400, "INVALID_INPUT")


def test_subscribing_sends_a_snapshot_then_billing_notifications_live(
    connect: Any,
    db: Database,
    publisher: EventPublisher,
    user_id: uuid.UUID,
) -> None:
    bill(db, user_id, "before")
    sock = connect("notifications", user_id)
    sock.send(type="subscribe", topic=f"user:{user_id}")
    assert sock.recv()["type"] == "subscribed"
    snapshot = sock.recv()

    note = bill(db, user_id, "Credits low", action_url="/billing", metadata={"balance": 3})
    publish_notifications(publisher, [note])
    live = sock.recv()

    assert (snapshot["event"], snapshot["seq"]) == ("notification_snapshot", 1)
    assert snapshot["data"]["unread_count"] == 1
    assert [n["title"] for n in snapshot["data"]["notifications"]] == ["before"]
    assert (live["channel"], live["event"], live["seq"]) == (
        "notifications",
        "notification_created",
        2,
    )
    assert live["topic"] == f"user:{user_id}"
    data = live["data"]
    assert (data["title"], data["action_url"], data["metadata"], data["read"]) == (
        "Credits low",
        "/billing",
        {"balance": 3},
        False,
    )
    assert set(data) >= {
        "notification_id",
        "user_id",
        "notification_type",
        "severity",
        "title",
        "message",
        "created_at",
        "read",
        "metadata",
    }


def test_a_run_finishing_pushes_its_notification_live(
    worker: Any,
    connect: Any,
    client: ApiClient,
    user_id: uuid.UUID,
) -> None:
    """finish_run publishes only the run's events; the hub turns the final one into a push."""
    sock = connect("notifications", user_id)
    sock.send(type="subscribe", topic=f"user:{user_id}")
    sock.recv()
    sock.recv()

    run_id = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {}}).json()[
        "request_id"
    ]
    pushed = sock.recv()

    assert (pushed["event"], pushed["seq"]) == ("notification_created", 1)
    assert pushed["data"]["metadata"]["workflow_run_id"] == run_id
    sock.expect_quiet()


def test_reconnecting_with_since_replays_missed_notifications_once(
    connect: Any,
    db: Database,
    publisher: EventPublisher,
    user_id: uuid.UUID,
) -> None:
    sock = connect("notifications", user_id)
    sock.send(type="subscribe", topic=f"user:{user_id}", since=0)
    sock.recv()
    publish_notifications(publisher, [bill(db, user_id, "one")])
    seen = sock.recv()["seq"]
    sock.close()

    missed = [bill(db, user_id, f"missed {i}") for i in range(3)]
    publish_notifications(publisher, missed)
    again = connect("notifications", user_id)
    again.send(type="subscribe", topic=f"user:{user_id}", since=seen)
    again.recv()
    replayed = [again.recv() for _ in range(3)]
    publish_notifications(publisher, [bill(db, user_id, "live")])
    live = again.recv()

    assert [m["seq"] for m in replayed] == [2, 3, 4]
    assert [m["data"]["title"] for m in replayed] == ["missed 0", "missed 1", "missed 2"]
    assert (live["seq"], live["data"]["title"]) == (5, "live")
    again.expect_quiet()


def test_another_users_notification_topic_is_refused(connect: Any) -> None:
    sock = connect("notifications", uuid.uuid4())
    sock.send(type="subscribe", topic=f"user:{uuid.uuid4()}")
    refusal = sock.recv()
    assert (refusal["type"], refusal["code"]) == ("error", "UNAUTHORIZED")
    sock.expect_quiet()


def test_an_admin_may_follow_anyones_notifications(
    connect: Any,
    db: Database,
) -> None:
    user, admin = uuid.uuid4(), uuid.uuid4()
    grant_admin(db, admin)
    bill(db, user, "theirs")
    sock = connect("notifications", admin)
    sock.send(type="subscribe", topic=f"user:{user}", since=0)
    sock.recv()
    assert sock.recv()["data"]["title"] == "theirs"


def test_a_workflow_topic_is_invalid_on_the_notifications_channel(connect: Any) -> None:
    sock = connect("notifications")
    sock.send(type="subscribe", topic=f"workflow_run:{uuid.uuid4()}")
    assert sock.recv()["code"] == "INVALID_TOPIC"


def test_notify_is_the_producer_api(db: Database) -> None:
    """The shape billing relies on: a Notification back, or None for a repeated dedupe key."""
    user = uuid.uuid4()
    note = bill(db, user, dedupe_key="stripe:evt_9")
    assert isinstance(note, notifications.Notification)
    assert note.envelope()["event"] == "notification_created"
    assert bill(db, user, dedupe_key="stripe:evt_9") is None
