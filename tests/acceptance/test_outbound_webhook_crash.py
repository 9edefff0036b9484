"""A worker killed in the middle of a webhook request loses nothing: once its lease on the
delivery expires, the re-queue job hands the delivery to another worker, same event id."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from celery import Celery

from conveyor.constants import TASK_REQUEUE_WEBHOOK_DELIVERIES
from conveyor.settings import Settings
from tests.support import ApiClient, worker_subprocess
from tests.webhook_receiver import Receiver, verify

# The lease on a delivery is connect + read timeout + 2 s: 5 s here.
SETTINGS = {
    "allow_private_webhooks": True,
    "webhook_connect_timeout_seconds": 1.0,
    "webhook_read_timeout_seconds": 2.0,
    "webhook_retry_base_seconds": 0.2,
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver that holds the first request until released."""
    with Receiver(hold_first=True) as server:
        yield server


@pytest.fixture
def worker_process(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker in its own process, as in production, on the runs and webhooks queues."""
    with worker_subprocess(
        settings,
        "runs,webhooks",
        CONVEYOR_ALLOW_PRIVATE_WEBHOOKS="true",
        WEBHOOK_CONNECT_TIMEOUT_SECONDS="1",
        WEBHOOK_READ_TIMEOUT_SECONDS="2",
    ) as process:
        yield process


def test_a_worker_killed_mid_delivery_does_not_lose_the_delivery(
    request: pytest.FixtureRequest,
    worker_process: subprocess.Popen[bytes],
    client: ApiClient,
    receiver: Receiver,
    celery_app: Celery,
) -> None:
    """kill -9 while the receiver holds the request: a second worker delivers the same event."""
    endpoint = client.post(
        "/api/webhook-endpoints", json={"url": receiver.url, "events": ["run.completed"]}
    ).json()
    client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {}})
    assert receiver.holding.wait(30), "the first worker never sent the webhook"

    worker_process.send_signal(signal.SIGKILL)
    worker_process.wait(timeout=10)
    receiver.release.set()
    request.getfixturevalue("worker")  # a second worker, on every queue
    # Beat's re-queue job, fired by hand: it hands the delivery on once the lease expired.
    deadline = time.monotonic() + 20
    while len(receiver.received) < 2 and time.monotonic() < deadline:
        celery_app.send_task(TASK_REQUEUE_WEBHOOK_DELIVERIES, kwargs={"older_than_seconds": 0})
        time.sleep(0.5)
    first, second = receiver.wait_for(2, 1)
    path = f"/api/webhook-endpoints/{endpoint['id']}/deliveries"
    while time.monotonic() < deadline + 5:
        [delivery] = client.get(path).json()["deliveries"]
        if delivery["status"] != "pending":
            break
        time.sleep(0.05)

    assert first.event_id == second.event_id
    assert verify(second.body, second.headers["conveyor-signature"], endpoint["secret"])
    assert delivery["status"] == "succeeded"
    assert delivery["attempts"] == 2
    assert [(a["attempt"], a["status_code"]) for a in delivery["attempt_log"]] == [(2, 200)]
    assert len(receiver.received) == 2
