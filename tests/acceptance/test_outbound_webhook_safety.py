"""Where webhooks may go, with private targets not allowed (the production default): only public
http(s) URLs, checked at registration, at submit, and again at delivery."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor.db import Database
from conveyor.outbound.endpoints import EndpointCreate, create_endpoint
from tests.support import ApiClient, wait_for_run
from tests.webhook_receiver import Receiver

# Registration checks literal addresses only, so these tests never look a name up nor connect.
PUBLIC_URL = "https://93.184.215.14/hooks"
SETTINGS = {"webhook_max_endpoints": 2}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback."""
    with Receiver() as server:
        yield server


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hooks",
        "http://localhost/hooks",
        "https://10.0.0.5/hooks",
        "https://192.168.1.1/hooks",
        "https://172.16.0.1/hooks",
        "http://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/hooks",
        "http://0.0.0.0/hooks",
        "http://[::1]/hooks",
        "http://[fd00::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
    ],
)
def test_a_private_url_is_refused_at_registration(client: ApiClient, url: str) -> None:
    response = client.post("/api/webhook-endpoints", json={"url": url, "events": ["run.failed"]})

    assert response.status_code == 400
    assert response.json()["code"] == "UNSAFE_WEBHOOK_URL"


@pytest.mark.parametrize(
    "url",
    ["ftp://93.184.215.14/hooks", "93.184.215.14/hooks", "https:///hooks", "https://u:p@a.b/x"],
)
def test_a_url_that_is_not_plain_http_is_refused(client: ApiClient, url: str) -> None:
    response = client.post("/api/webhook-endpoints", json={"url": url, "events": ["run.failed"]})

    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_WEBHOOK_URL"


def test_an_unknown_event_type_is_refused(client: ApiClient) -> None:
    response = client.post(
        "/api/webhook-endpoints", json={"url": PUBLIC_URL, "events": ["run.exploded"]}
    )

    assert response.status_code == 400
    assert response.json()["code"] == "UNKNOWN_EVENT_TYPE"


def test_a_public_url_is_accepted_up_to_the_endpoint_limit(client: ApiClient) -> None:
    """webhook_max_endpoints is 2 here."""
    body = {"url": PUBLIC_URL, "events": ["run.completed", "run.completed", "quota.exceeded"]}

    first = client.post("/api/webhook-endpoints", json=body)
    second = client.post("/api/webhook-endpoints", json=body)
    third = client.post("/api/webhook-endpoints", json=body)

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["events"] == ["run.completed", "quota.exceeded"]
    assert third.status_code == 400
    assert third.json()["code"] == "TOO_MANY_WEBHOOK_ENDPOINTS"


def test_a_run_with_a_private_webhook_url_is_refused_at_submit(client: ApiClient) -> None:
    response = client.post(
        "/api/agents/invoke",
        json={"agent_type": "echo", "input": {}, "webhook_url": "http://10.1.2.3/hooks"},
    )

    assert response.status_code == 400
    assert response.json()["code"] == "UNSAFE_WEBHOOK_URL"
    assert client.get("/api/runs").json()["runs"] == []


def test_a_private_address_is_refused_again_at_delivery(
    client: ApiClient, user_id: uuid.UUID, db: Database, worker: Any, receiver: Receiver
) -> None:
    """An endpoint that was acceptable when registered (allowed then, or its DNS changed since)
    is checked again before connecting: the attempt fails and nothing is sent."""
    endpoint = create_endpoint(
        db,
        user_id,
        EndpointCreate(url=receiver.url, events=["run.completed"]),
        allow_private=True,
        max_endpoints=10,
    )

    response = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {}})
    wait_for_run(client, response.json()["request_id"])
    path = f"/api/webhook-endpoints/{endpoint.id}/deliveries"
    deadline = time.monotonic() + 15
    attempts: list[dict[str, Any]] = []
    while not attempts and time.monotonic() < deadline:
        [delivery] = client.get(path).json()["deliveries"] or [{"attempt_log": []}]
        attempts = delivery["attempt_log"]
        time.sleep(0.05)

    assert len(attempts) == 1, "the refused attempt was not recorded"
    assert attempts[0]["status_code"] is None
    assert attempts[0]["error"].startswith("UNSAFE_WEBHOOK_URL")
    assert delivery["status"] == "pending", "a refused attempt is retried like any failure"
    assert receiver.received == []
