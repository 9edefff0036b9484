"""Outbound webhooks end to end: a real worker signs and POSTs run events to a loopback receiver,
retries failures with the same event id, disables endpoints that are gone, and only the owner sees
or replays an endpoint's deliveries."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import tests.agents_for_tests  # noqa: F401 - registers the `explode` agent
from conveyor.constants import TASK_REQUEUE_WEBHOOK_DELIVERIES
from conveyor.db import Database
from conveyor.ledger.ingest import UsageEventIn, record_batch
from tests.support import ApiClient, wait_for_run, wait_until
from tests.webhook_receiver import Receiver, self_signed_tls, verify

# Loopback receivers need private targets allowed; retries come within a second here.
SETTINGS = {
    "allow_private_webhooks": True,
    "webhook_retry_base_seconds": 0.2,
    "webhook_retry_max_seconds": 1.0,
    "webhook_connect_timeout_seconds": 1.0,
    "webhook_read_timeout_seconds": 2.0,
    "webhook_disable_after_failures": 3,
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback."""
    with Receiver() as server:
        yield server


def register(client: ApiClient, url: str, events: tuple[str, ...] = ("run.completed",)) -> Any:
    """Register an endpoint and return the 201 body (with its secret)."""
    response = client.post("/api/webhook-endpoints", json={"url": url, "events": list(events)})
    assert response.status_code == 201, response.text
    return response.json()


def run_echo(client: ApiClient, **extra: Any) -> dict[str, Any]:
    """Invoke the echo agent and wait for the run to end."""
    response = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {}, **extra})
    assert response.status_code == 202, response.text
    return wait_for_run(client, response.json()["request_id"])


def deliveries(client: ApiClient, endpoint_id: str) -> list[dict[str, Any]]:
    """The endpoint's deliveries as the API lists them."""
    response = client.get(f"/api/webhook-endpoints/{endpoint_id}/deliveries")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


def settled(client: ApiClient, endpoint_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The endpoint's deliveries once `count` of them are no longer pending."""
    return wait_until(
        lambda: (
            found
            if len(found := deliveries(client, endpoint_id)) >= count
            and all(d["status"] != "pending" for d in found)
            else None
        ),
        15,
        f"{count} deliveries settling",
    )


def test_a_completed_run_delivers_one_signed_event_that_verifies(
    client: ApiClient, worker: Any, receiver: Receiver
) -> None:
    endpoint = register(client, receiver.url)

    run = run_echo(client)
    [request] = receiver.wait_for(1, 15)
    [delivery] = settled(client, endpoint["id"])

    assert verify(request.body, request.headers["conveyor-signature"], endpoint["secret"])
    assert not verify(request.body, request.headers["conveyor-signature"], "whsec_other")
    assert request.event["type"] == "run.completed"
    assert request.event["id"] == request.event_id
    assert request.event["data"]["run_id"] == run["id"]
    assert request.event["data"]["status"] == "completed"
    assert delivery["status"] == "succeeded"
    assert [a["status_code"] for a in delivery["attempt_log"]] == [200]
    assert len(receiver.received) == 1


def test_a_receiver_failing_twice_gets_the_same_event_three_times(
    client: ApiClient, worker: Any, receiver: Receiver
) -> None:
    endpoint = register(client, receiver.url)
    receiver.answer(500, 500)

    run_echo(client)
    requests = receiver.wait_for(3, 20)
    [delivery] = settled(client, endpoint["id"])

    assert len({r.event_id for r in requests}) == 1
    assert len({r.body for r in requests}) == 1
    assert all(
        verify(r.body, r.headers["conveyor-signature"], endpoint["secret"]) for r in requests
    )
    assert delivery["status"] == "succeeded"
    assert [(a["attempt"], a["status_code"]) for a in delivery["attempt_log"]] == [
        (1, 500),
        (2, 500),
        (3, 200),
    ]
    assert delivery["attempt_log"][0]["next_attempt_at"] is not None


def test_a_run_with_its_own_webhook_url_is_signed_with_the_users_signing_secret(
    client: ApiClient, worker: Any, receiver: Receiver
) -> None:
    run = run_echo(client, webhook_url=receiver.url + "?run=1")
    [request] = receiver.wait_for(1, 15)
    secret = client.get("/api/webhook-signing-secret").json()["secret"]

    assert request.path == "/hooks?run=1"
    assert request.event["data"]["run_id"] == run["id"]
    assert verify(request.body, request.headers["conveyor-signature"], secret)


def test_a_failed_run_is_delivered_only_to_endpoints_subscribed_to_run_failed(
    client: ApiClient, worker: Any, receiver: Receiver
) -> None:
    with Receiver() as other:
        register(client, receiver.url, ("run.failed",))
        completions = register(client, other.url, ("run.completed",))

        response = client.post(
            "/api/agents/invoke", json={"agent_type": "explode", "input": {"reason": "no"}}
        )
        assert response.status_code == 202, response.text
        run = wait_for_run(client, response.json()["request_id"])
        [request] = receiver.wait_for(1, 15)

        assert run["status"] == "failed"
        assert request.event["type"] == "run.failed"
        assert request.event["data"]["error_code"] == run["error_code"]
        assert deliveries(client, completions["id"]) == []
        assert other.received == []


def test_410_gone_disables_the_endpoint_and_tells_the_owner(
    client: ApiClient, worker: Any, receiver: Receiver
) -> None:
    endpoint = register(client, receiver.url)
    receiver.answer(410)

    run_echo(client)
    [delivery] = settled(client, endpoint["id"])
    [listed] = client.get("/api/webhook-endpoints").json()["webhook_endpoints"]
    notes = client.get("/api/notifications").json()["notifications"]
    run_echo(client)

    assert delivery["status"] == "failed"
    assert listed["enabled"] is False
    assert "410" in listed["disabled_reason"]
    assert [
        n["metadata"] for n in notes if n["notification_type"] == "webhook_endpoint_disabled"
    ] == [{"endpoint_id": endpoint["id"]}]
    assert len(deliveries(client, endpoint["id"])) == 1, "a disabled endpoint gets no new event"
    assert len(receiver.received) == 1


def test_failures_in_a_row_disable_the_endpoint(
    client: ApiClient, worker: Any, receiver: Receiver
) -> None:
    """webhook_disable_after_failures (3 here) failed attempts in a row disable the endpoint."""
    endpoint = register(client, receiver.url)
    receiver.answer(500, 500, 500, 500)

    run_echo(client)
    [delivery] = settled(client, endpoint["id"])
    [listed] = client.get("/api/webhook-endpoints").json()["webhook_endpoints"]

    assert delivery["status"] == "failed"
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 500]
    assert listed["enabled"] is False
    assert listed["consecutive_failures"] == 3
    assert len(receiver.received) == 3


def test_redeliver_sends_the_same_event_again(
    client: ApiClient, worker: Any, receiver: Receiver
) -> None:
    endpoint = register(client, receiver.url)
    run_echo(client)
    [first] = settled(client, endpoint["id"])

    response = client.post(f"/api/deliveries/{first['id']}/redeliver")
    requests = receiver.wait_for(2, 15)
    both = settled(client, endpoint["id"], 2)

    assert response.status_code == 202, response.text
    assert response.json()["event_id"] == first["event_id"]
    assert requests[0].event_id == requests[1].event_id == first["event_id"]
    assert [d["status"] for d in both] == ["succeeded", "succeeded"]


def test_only_the_owner_sees_or_changes_an_endpoint_and_its_deliveries(
    client: ApiClient, make_client: Callable[..., ApiClient], worker: Any, receiver: Receiver
) -> None:
    endpoint = register(client, receiver.url)
    run_echo(client)
    [delivery] = settled(client, endpoint["id"])
    stranger = make_client(uuid.uuid4())
    base = f"/api/webhook-endpoints/{endpoint['id']}"

    answers = [
        stranger.get(f"{base}/deliveries"),
        stranger.post(f"{base}/rotate-secret"),
        stranger.request("DELETE", base),
        stranger.post(f"/api/deliveries/{delivery['id']}/redeliver"),
    ]

    assert [a.status_code for a in answers] == [404, 404, 404, 404]
    assert [a.json()["code"] for a in answers] == [
        "WEBHOOK_ENDPOINT_NOT_FOUND",
        "WEBHOOK_ENDPOINT_NOT_FOUND",
        "WEBHOOK_ENDPOINT_NOT_FOUND",
        "WEBHOOK_DELIVERY_NOT_FOUND",
    ]
    assert stranger.get("/api/webhook-endpoints").json()["webhook_endpoints"] == []
    assert len(deliveries(client, endpoint["id"])) == 1


def test_the_secret_is_shown_once_and_never_listed(client: ApiClient, receiver: Receiver) -> None:
    endpoint = register(client, receiver.url)

    [listed] = client.get("/api/webhook-endpoints").json()["webhook_endpoints"]

    assert endpoint["secret"].startswith("whsec_")
    assert "secret" not in listed
    assert listed["id"] == endpoint["id"]
    assert listed["enabled"] is True


def test_after_a_rotation_both_secrets_sign_during_the_grace_period(
    client: ApiClient, worker: Any, receiver: Receiver
) -> None:
    endpoint = register(client, receiver.url)
    rotated = client.post(f"/api/webhook-endpoints/{endpoint['id']}/rotate-secret").json()

    run_echo(client)
    [request] = receiver.wait_for(1, 15)
    header = request.headers["conveyor-signature"]

    assert rotated["secret"] != endpoint["secret"]
    assert verify(request.body, header, rotated["secret"])
    assert verify(request.body, header, endpoint["secret"])
    assert header.count("v1=") == 2


def test_a_deleted_endpoint_gets_no_more_events(
    client: ApiClient, worker: Any, receiver: Receiver
) -> None:
    endpoint = register(client, receiver.url)

    deleted = client.request("DELETE", f"/api/webhook-endpoints/{endpoint['id']}")
    run_echo(client)
    time.sleep(0.5)  # a delivery, had one been created, would have arrived by now

    assert deleted.status_code == 204
    assert client.get("/api/webhook-endpoints").json()["webhook_endpoints"] == []
    assert receiver.received == []


def test_a_quota_used_up_sends_quota_exceeded_on_the_next_requeue_tick(
    client: ApiClient,
    user_id: uuid.UUID,
    db: Database,
    worker: Any,
    celery_app: Celery,
    receiver: Receiver,
) -> None:
    """Crossing 80 percent sends nothing; crossing 100 percent sends one quota.exceeded."""
    plan = f"p{user_id.hex[:12]}"
    with db.transaction() as conn:
        conn.execute(
            "insert into plans values (%s, 'test', 100, 1000000000000, 100000, 100000, 0)", (plan,)
        )
        conn.execute(
            "insert into user_accounts (user_id, plan_id) values (%s, %s)", (user_id, plan)
        )
    endpoint = register(client, receiver.url, ("quota.exceeded",))

    def usage(key: str, tokens: int) -> UsageEventIn:
        return UsageEventIn(
            user_id=user_id,
            idempotency_key=key,
            provider="openai",
            model="gpt-4o-mini",
            prompt_tokens=tokens,
            completion_tokens=0,
            input_cost_micro_usd=0,
            output_cost_micro_usd=0,
        )

    record_batch(db, [usage("a", 85)])
    record_batch(db, [usage("b", 20)])
    deadline = time.monotonic() + 15
    while not receiver.received and time.monotonic() < deadline:
        celery_app.send_task(TASK_REQUEUE_WEBHOOK_DELIVERIES, kwargs={"older_than_seconds": 0})
        time.sleep(0.3)
    [request] = receiver.wait_for(1, 1)
    settled(client, endpoint["id"])

    assert request.event["type"] == "quota.exceeded"
    assert request.event["data"]["percent"] == 100
    assert verify(request.body, request.headers["conveyor-signature"], endpoint["secret"])
    assert len(receiver.received) == 1


def test_a_queued_run_cancelled_sends_run_cancelled_on_the_next_requeue_tick(
    request: pytest.FixtureRequest, client: ApiClient, celery_app: Celery, receiver: Receiver
) -> None:
    register(client, receiver.url, ("run.cancelled",))
    accepted = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {}}).json()

    cancelled = client.post(f"/api/runs/{accepted['request_id']}/cancel").json()
    request.getfixturevalue("worker")  # started after the cancel, so the run never ran
    deadline = time.monotonic() + 15
    while not receiver.received and time.monotonic() < deadline:
        celery_app.send_task(TASK_REQUEUE_WEBHOOK_DELIVERIES, kwargs={"older_than_seconds": 0})
        time.sleep(0.3)
    [sent] = receiver.wait_for(1, 1)

    assert cancelled["status"] == "cancelled"
    assert sent.event["type"] == "run.cancelled"
    assert sent.event["data"]["run_id"] == accepted["request_id"]


def test_a_redirect_is_a_failed_attempt_and_is_not_followed(
    client: ApiClient, worker: Any, receiver: Receiver
) -> None:
    with Receiver() as elsewhere:
        receiver.location = elsewhere.url
        endpoint = register(client, receiver.url)
        receiver.answer(307)

        run_echo(client)
        [delivery] = settled(client, endpoint["id"])

        assert [a["status_code"] for a in delivery["attempt_log"]] == [307, 200]
        assert delivery["attempt_log"][0]["error"] == "HTTP 307"
        assert elsewhere.received == []


def test_https_is_delivered_to_the_checked_address_with_the_certificate_verified(
    client: ApiClient, worker: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket goes to the resolved address while TLS still checks the host name."""
    context, certificate = self_signed_tls(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    with Receiver(tls=context) as secure:
        endpoint = register(client, secure.url)

        run_echo(client)
        [request] = secure.wait_for(1, 15)
        [delivery] = settled(client, endpoint["id"])

    assert secure.url.startswith("https://localhost:")
    assert verify(request.body, request.headers["conveyor-signature"], endpoint["secret"])
    assert delivery["status"] == "succeeded"


def test_an_untrusted_certificate_is_a_failed_attempt(
    client: ApiClient, worker: Any, tmp_path: Path
) -> None:
    context, _ = self_signed_tls(tmp_path)
    with Receiver(tls=context) as untrusted:
        endpoint = register(client, untrusted.url)

        run_echo(client)
        [delivery] = settled(client, endpoint["id"])  # 3 failures in a row disable the endpoint

    assert [a["status_code"] for a in delivery["attempt_log"]] == [None, None, None]
    assert "CERTIFICATE_VERIFY_FAILED" in delivery["attempt_log"][0]["error"]
    assert untrusted.received == []
