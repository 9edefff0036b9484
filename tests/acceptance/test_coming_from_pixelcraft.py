"""Seed 001 (PixelCraft Bloom's FastAPI backend), called as its document writes it: agents invoke
and workflows execute (also by a service acting for a user), analytics, notifications, Stripe
checkout, and the three websockets in both of the document's message shapes. The webhook's
documented effect (a subscription checkout recorded `active`) is test_stripe_processing's."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

# Registering the `explode` agent and the `big_output` workflow.
import tests.agents_for_tests
import tests.workflows_for_tests  # noqa: F401
from conveyor.auth.tokens import mint_service_token
from conveyor.db import Database
from conveyor.events.notifications import notify, publish_notifications
from conveyor.events.run_events import EventPublisher
from conveyor.ledger import accounts
from conveyor.ops.analytics import push_analytics
from tests.acceptance import stripe_deliveries
from tests.acceptance.websocket_clients import RunDriver
from tests.fake_stripe import FakeStripe
from tests.support import API_SECRET, ApiClient, token_for

USES_FAKE_STRIPE = True
SETTINGS = {
    **stripe_deliveries.SETTINGS,
    "stripe_price_id": "price_basic",
    "stripe_success_url": "https://app.example.com/payments/success",
    "stripe_cancel_url": "https://app.example.com/payments/cancel",
    "workflow_wait_seconds": 10,
}
ClientFactory = Callable[..., ApiClient]
STATUS_FIELDS = {"workflow_run_id", "workflow_id", "user_id", "status", "step", "progress"}
NOTIFICATION_FIELDS = {"notification_id", "user_id", "notification_type", "severity", "title"}
NOTIFICATION_FIELDS |= {"message", "created_at", "read", "metadata"}
# A fixed, past week for trends, so no test depends on today's date.
WEEK = {"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-01-08T00:00:00Z"}
IN_THE_WEEK = datetime(2026, 1, 5, 10, tzinfo=UTC)


def service_client(make_client: ClientFactory, *scopes: str) -> ApiClient:
    """A server-to-server caller (a Conveyor service token)."""
    return make_client(token=mint_service_token("crm", list(scopes), secret=API_SECRET))


def add_conversation(db: Database, user: uuid.UUID, at: datetime, messages: int) -> None:
    """An agent session (seed 001's conversation) with its messages, all at `at`."""
    with db.transaction() as conn:
        session = conn.execute(
            "insert into agent_sessions (user_id, agent_mode, created_at, last_sequence_number) "
            "values (%s, 'chat', %s, %s) returning id",
            (user, at, messages),
        ).fetchone()
        for number in range(1, messages + 1):
            conn.execute(
                "insert into agent_messages (session_id, sequence_number, role, content, "
                "created_at) values (%s, %s, 'user', 'hi', %s)",
                (session["id"], number, at),
            )


def bill(db: Database, user: uuid.UUID, title: str = "Payment received") -> Any:
    with db.transaction() as conn:
        return notify(conn, user, "payment", "success", title, "Thanks!", action_url="/billing")


# --- agents ---------------------------------------------------------------------------------
def test_invoke_as_documented_answers_its_request_id_and_status(client: ApiClient) -> None:
    response = client.post(
        "/api/agents/invoke",
        json={"agent_type": "echo", "input": {"query": "SaaS"}, "metadata": {"source": "dash"}},
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert uuid.UUID(body["request_id"])
    assert body["status"] == "queued"
    assert "result" not in body


@pytest.mark.usefixtures("worker")
def test_invoke_with_async_false_answers_completed_with_the_result(client: ApiClient) -> None:
    response = client.post(
        "/api/agents/invoke",
        json={"agent_type": "echo", "input": {"query": "SaaS"}, "async": False},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["result"]) == ("completed", {"query": "SaaS"})
    assert uuid.UUID(body["request_id"])


@pytest.mark.usefixtures("worker")
def test_a_failed_synchronous_invoke_answers_failed_with_the_error(client: ApiClient) -> None:
    body = client.post(
        "/api/agents/invoke",
        json={"agent_type": "explode", "input": {"reason": "no leads"}, "async": False},
    ).json()

    assert body["status"] == "failed"
    assert "no leads" in body["error"]
    assert "result" not in body


@pytest.mark.usefixtures("worker")
def test_execute_waits_by_default_and_answers_the_outputs(client: ApiClient) -> None:
    response = client.post(
        "/api/agents/workflows/execute",
        json={"workflow_id": "big_output", "inputs": {"size": 3}},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert uuid.UUID(body["workflow_run_id"])
    assert body["status"] == "completed"
    assert body["outputs"] == {"blob": "xxx"}
    assert "error" not in body


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize(
    ("path", "body", "result"),
    [
        ("/api/agents/invoke", {"agent_type": "echo", "input": {"n": 1}, "async": False}, "result"),
        (
            "/api/agents/workflows/execute",
            {"workflow_id": "big_output", "inputs": {"size": 1}},
            "outputs",
        ),
    ],
)
def test_a_service_acting_for_a_user_runs_as_that_user(
    make_client: ClientFactory,
    db: Database,
    user_id: uuid.UUID,
    path: str,
    body: dict[str, Any],
    result: str,
) -> None:
    accounts.account(db, user_id)  # the user exists here
    service = service_client(make_client, "runs:write")

    response = service.post(path, json={**body, "user_id": str(user_id)})

    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["status"], bool(answer[result])) == ("completed", True)
    run_id = answer.get("request_id") or answer["workflow_run_id"]
    assert make_client(user_id).get(f"/api/runs/{run_id}").status_code == 200


def test_a_service_needs_the_scope_and_an_existing_user(
    make_client: ClientFactory, db: Database, user_id: uuid.UUID
) -> None:
    accounts.account(db, user_id)
    refusals = [
        ((), {"user_id": str(user_id)}, 403, "FORBIDDEN"),
        (("runs:write",), {}, 400, "INVALID_INPUT"),
        (("runs:write",), {"user_id": str(uuid.uuid4())}, 400, "UNKNOWN_USER"),
    ]
    for scopes, named, status, code in refusals:
        response = service_client(make_client, *scopes).post(
            "/api/agents/invoke", json={"agent_type": "echo", "input": {}, **named}
        )
        assert (response.status_code, response.json()["code"]) == (status, code), named
    with db.transaction() as conn:
        assert conn.execute("select count(*) as n from workflow_runs").fetchone()["n"] == 0


# --- analytics ------------------------------------------------------------------------------
def test_the_overview_carries_the_documented_keys_beside_the_native_ones(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    add_conversation(db, user_id, datetime.now(UTC) - timedelta(days=1), messages=3)

    body = client.get("/api/analytics/overview").json()

    assert body["active_conversations"] == {"value": 1, "change": None}
    for key in ("total_leads", "conversion_rate", "total_revenue"):
        assert set(body[key]) == {"value", "change"}
    assert "runs" in body["kpis"]


def test_trends_take_the_documented_names(
    client: ApiClient, db: Database, user_id: uuid.UUID
) -> None:
    add_conversation(db, user_id, IN_THE_WEEK, messages=2)
    asked = [
        ({"topic": "conversation_trends", **WEEK}, "conversations", 1),
        ({"metric": "messages", **WEEK, "aggregation": "daily"}, "messages", 2),
        ({"metric": "leads", **WEEK}, "new_users", 0),
    ]
    for params, metric, count in asked:
        body = client.get("/api/analytics/trends", params=params).json()

        assert body["metric"] == metric
        assert len(body["series"]) == 7
        assert body["series"][4] == {"date": "2026-01-05", "value": count}


def test_a_trend_given_both_names_of_one_parameter_is_a_400(client: ApiClient) -> None:
    response = client.get(
        "/api/analytics/trends", params={"metric": "runs", "start": WEEK["start_date"], **WEEK}
    )
    assert (response.status_code, response.json()["code"]) == (400, "INVALID_INPUT")


# --- notifications --------------------------------------------------------------------------
def test_a_notification_is_fetched_by_id_and_only_by_its_user(
    client: ApiClient, make_client: ClientFactory, db: Database, user_id: uuid.UUID
) -> None:
    note = bill(db, user_id)

    mine = client.get(f"/api/notifications/{note.id}")
    theirs = make_client().get(f"/api/notifications/{note.id}")
    an_admins = make_client(token=token_for(uuid.uuid4(), admin=True)).get(
        f"/api/notifications/{note.id}"
    )

    assert mine.status_code == 200
    assert mine.json()["id"] == str(note.id)
    assert set(mine.json()) >= NOTIFICATION_FIELDS | {"id", "action_url"}
    assert (theirs.status_code, theirs.json()["code"]) == (404, "NOTIFICATION_NOT_FOUND")
    assert (an_admins.status_code, an_admins.json()["code"]) == (404, "NOTIFICATION_NOT_FOUND")
    listed = client.get("/api/notifications").json()["notifications"]
    assert [n["id"] for n in listed] == [str(note.id)]


# --- websockets -----------------------------------------------------------------------------
def test_an_invalid_token_closes_every_socket_with_1008(connect: Any) -> None:
    for channel in ("analytics", "notifications", "workflows"):
        assert connect(channel, token="not.a.jwt").closed_with()[0] == 1008


def test_a_workflows_socket_gets_its_users_run_status_typed_from_connect(
    connect: Any, db: Database, publisher: EventPublisher, user_id: uuid.UUID
) -> None:
    sock = connect("workflows", user_id, typed=True)
    sock.expect_quiet()  # connected and following
    driver = RunDriver(db, publisher, user_id)
    driver.start()

    queued, running = sock.recv(), sock.recv()

    assert (queued["type"], queued["data"]["status"]) == ("workflow_status_update", "queued")
    assert (running["type"], running["data"]["status"]) == ("workflow_status_update", "running")
    assert set(running["data"]) >= STATUS_FIELDS | {"updated_at"}
    # Conveyor's envelope rides along: the same message read by the other shape.
    assert running["topic"] == f"workflow_run:{driver.run_id}"
    assert running["channel"] == "workflows"
    assert {"ts", "seq", "event"} <= set(running)
    sock.expect_quiet()  # step events are for subscribers of the run's topic


def test_a_notifications_socket_gets_notification_created_typed_from_connect(
    connect: Any, db: Database, publisher: EventPublisher, user_id: uuid.UUID
) -> None:
    sock = connect("notifications", user_id, typed=True)
    sock.send(type="heartbeat", timestamp="2023-06-15T12:34:56Z")
    assert sock.recv()["timestamp"] == "2023-06-15T12:34:56Z"

    publish_notifications(publisher, [bill(db, user_id)])
    message = sock.recv()

    assert message["type"] == "notification_created"
    assert set(message["data"]) >= NOTIFICATION_FIELDS
    assert message["data"]["severity"] == "success"
    assert (message["channel"], message["topic"]) == ("notifications", f"user:{user_id}")


def test_the_documented_notifications_example_gets_each_notification_once_as_an_event(
    connect: Any, db: Database, publisher: EventPublisher, user_id: uuid.UUID
) -> None:
    """`onopen`: subscribe to `user:<id>`; from then on the envelope shape, and no typed copy."""
    sock = connect("notifications", user_id, typed=True)
    sock.send(type="subscribe", topic=f"user:{user_id}")
    assert sock.recv() == {"type": "subscribed", "topic": f"user:{user_id}"}
    assert sock.recv()["event"] == "notification_snapshot"

    publish_notifications(publisher, [bill(db, user_id, "Upgraded")])
    message = sock.recv()

    assert (message["type"], message["channel"]) == ("event", "notifications")
    assert message["topic"] == f"user:{user_id}"
    data = message["data"]
    assert (data["severity"], data["title"], data["action_url"]) == (
        "success",
        "Upgraded",
        "/billing",
    )
    assert uuid.UUID(data["id"]) == uuid.UUID(data["notification_id"])
    assert {"message", "created_at"} <= set(data)
    assert "ts" in message
    sock.expect_quiet()


def test_a_topic_that_is_not_yours_or_not_the_channels_is_an_error_message(
    connect: Any, user_id: uuid.UUID
) -> None:
    sock = connect("notifications", user_id)
    for topic, code in ((f"user:{uuid.uuid4()}", "UNAUTHORIZED"), ("lead_trends", "INVALID_TOPIC")):
        sock.send(type="subscribe", topic=topic)
        error = sock.recv()
        assert (error["type"], error["code"]) == ("error", code)
        assert error["message"]
    sock.expect_quiet()


def test_an_analytics_subscription_with_the_documented_params_answers_a_series_or_an_error(
    connect: Any, db: Database, user_id: uuid.UUID
) -> None:
    add_conversation(db, user_id, IN_THE_WEEK, messages=1)
    sock = connect("analytics", user_id)
    for topic, value in (("conversation_trends", 1), ("lead_trends", 0)):
        sock.send(type="subscribe", topic=topic, params={**WEEK, "aggregation": "daily"})
        assert sock.recv() == {"type": "subscribed", "topic": topic}

        update = sock.recv()

        assert (update["type"], update["channel"], update["topic"]) == ("event", "analytics", topic)
        assert len(update["data"]) == 7
        assert update["data"][4] == {"date": "2026-01-05", "value": value}
        assert "ts" in update
        sock.send(type="unsubscribe", topic=topic)
        assert sock.recv() == {"type": "unsubscribed", "topic": topic}
    sock.send(type="subscribe", topic="lead_trends", params={"aggregation": "weekly"})
    assert sock.recv()["code"] == "BAD_REQUEST"
    sock.send(type="ping")
    assert sock.recv() == {"type": "pong"}


def test_an_analytics_socket_gets_its_users_new_activity_typed_on_the_roll_up(
    connect: Any, db: Database, publisher: EventPublisher, user_id: uuid.UUID
) -> None:
    sock = connect("analytics", user_id, typed=True)
    sock.expect_quiet()  # following from here
    add_conversation(db, user_id, datetime.now(UTC), messages=1)
    lead = RunDriver(db, publisher, user_id)  # the user's first run: a lead
    lead.start()
    lead.complete(0)
    lead.complete(1)
    lead.finish()  # and its analysis
    with db.transaction() as conn:
        conn.execute(
            "insert into user_subscriptions (stripe_subscription_id, user_id, plan_id, status, "
            "state_at, state_event_id) values ('sub_bloom', %s, 'basic', 'active', now(), 'evt')",
            (user_id,),
        )
    time.sleep(1.2)  # events are reported once a second old (analytics_events.LAG_SECONDS)

    push_analytics(publisher)
    received = {message["type"]: message for message in [sock.recv() for _ in range(4)]}

    activity = {"lead_created", "lead_analyzed", "message_created", "subscription_created"}
    assert set(received) == activity
    assert received["subscription_created"]["data"]["plan"] == "basic"
    message = received["message_created"]
    assert set(message["data"]) == {"conversation_id", "message_id", "user_id", "created_at"}
    assert received["lead_created"]["data"]["lead_id"] == str(user_id)
    assert received["lead_analyzed"]["data"]["analysis_id"] == str(lead.run_id)
    assert "completed_at" in received["lead_analyzed"]["data"]
    assert message["channel"] == "analytics"
    push_analytics(publisher)  # nothing new: nothing sent
    add_conversation(db, user_id, datetime.now(UTC), messages=1)
    time.sleep(1.2)
    push_analytics(publisher)
    later = sock.recv()
    assert later["type"] == "message_created"
    assert later["data"]["message_id"] != message["data"]["message_id"]  # each reported once


# --- payments -------------------------------------------------------------------------------
def test_checkout_takes_the_documented_body_and_answers_id_and_url(
    client: ApiClient, fake_stripe: FakeStripe
) -> None:
    response = client.post(
        "/api/payments/create-checkout-session",
        json={
            "mode": "subscription",
            "success_url": "https://app.example.com/payments/success",
            "cancel_url": "https://app.example.com/payments/cancel",
            "customer_email": "user@example.com",
            "metadata": {"package_id": str(uuid.uuid4())},
        },
    )

    assert response.status_code == 201, response.text
    assert set(response.json()) == {"id", "url"}
    sent = fake_stripe.calls("/v1/checkout/sessions")[0].params
    assert sent["line_items"] == [{"price": "price_basic", "quantity": "1"}]  # STRIPE_PRICE_ID
