"""Celery on RabbitMQ (BROKER_URL=amqp://…): runs go through quorum queues, a publish is
confirmed, a countdown waits in RabbitMQ, a run's message is acknowledged when the run starts
(the lease and the reaper keep it), and the operators' views read RabbitMQ's queues.
Skipped without TEST_BROKER_URL; the tests share the broker, so they take turns (conftest)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from celery import Celery

import tests.workflows_for_tests  # noqa: F401 - registers cooperative_wait
from conveyor.cli.status import read_queues
from conveyor.constants import QUEUES, TASK_EXECUTE_RUN, TASK_REQUEUE_STALE_RUNS
from conveyor.db import Database
from conveyor.ops.broker_queues import amqp_connection
from conveyor.settings import Settings
from tests.acceptance.durable_waits_calls import submit
from tests.rabbitmq_vhost import DELAYED_QUEUES
from tests.support import (
    ApiClient,
    celery_process,
    new_run,
    wait_for_run,
    wait_until,
    worker_args,
    worker_env,
    worker_subprocess,
)
from worker.celery_app import send_or_log

USES_RABBITMQ = True


@pytest.fixture
def channel(settings: Settings) -> Iterator[Any]:
    """A channel on the test's RabbitMQ."""
    assert settings.broker_url is not None
    connection = amqp_connection(settings.broker_url, timeout=5)
    connection.connect()
    try:
        yield connection.channel()
    finally:
        connection.close()


def ready(channel: Any, queue: str) -> int:
    """Messages ready in queue (0 when it does not exist)."""
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except amqp.exceptions.NotFound:
        raise AssertionError(f"queue {queue} was not declared") from None


def submit_echo(client: ApiClient) -> str:
    """Submit a run of the built-in echo agent; its id."""
    response = client.post("/api/agents/invoke", json={"agent_type": "echo", "input": {"n": 1}})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["request_id"]
    return run_id


def test_a_submitted_run_completes_through_rabbitmq(client: ApiClient, settings: Settings) -> None:
    with worker_subprocess(settings, "runs"):
        run_id = submit_echo(client)
        assert wait_for_run(client, run_id, timeout=30)["status"] == "completed"


def test_conveyors_queues_are_quorum_queues(settings: Settings, channel: Any) -> None:
    with worker_subprocess(settings, ",".join(QUEUES)):
        wait_until(lambda: all(declared(channel.connection, q) for q in QUEUES), 20, "queues")
    # Declaring an existing queue with other arguments is refused: these exist as quorum queues.
    with pytest.raises(amqp.exceptions.PreconditionFailed):
        channel.queue_declare(queue="runs", durable=True, arguments={"x-queue-type": "classic"})


def declared(connection: Any, queue: str) -> bool:
    """Whether queue exists (a passive declare of a missing one closes its channel)."""
    probe = connection.channel()
    try:
        probe.queue_declare(queue=queue, passive=True)
    except amqp.exceptions.NotFound:
        return False
    probe.close()
    return True


def test_a_publish_rabbitmq_refuses_raises_instead_of_vanishing(celery_app: Celery) -> None:
    # With publisher confirms the refusal comes back to the publish; without, it would be lost.
    with pytest.raises(amqp.exceptions.NotFound):
        celery_app.send_task(TASK_EXECUTE_RUN, args=["x"], exchange="no-such-exchange")


def test_a_countdown_waits_in_rabbitmq_not_in_a_worker(
    client: ApiClient,
    user_id: uuid.UUID,
    settings: Settings,
    celery_app: Celery,
    channel: Any,
    db: Database,
) -> None:
    run = new_run(db, user_id=user_id)
    with worker_subprocess(settings, "runs"):
        # The worker declares the delayed-delivery exchanges and queues as it starts.
        wait_until(lambda: declared(channel.connection, "celery_delayed_0"), 20, "delayed queues")
        celery_app.send_task(TASK_EXECUTE_RUN, args=[str(run.id)], countdown=3)

        assert sum(ready(channel, queue) for queue in DELAYED_QUEUES) == 1
        assert wait_for_run(client, str(run.id), timeout=30)["status"] == "completed"


def test_a_countdown_under_a_second_is_sent_not_refused(
    client: ApiClient, user_id: uuid.UUID, settings: Settings, celery_app: Celery, db: Database
) -> None:
    # Native delayed delivery counts whole seconds and refuses a countdown under one (kombu).
    run = new_run(db, user_id=user_id)
    with worker_subprocess(settings, "runs"):
        assert send_or_log(celery_app, TASK_EXECUTE_RUN, str(run.id), countdown=0.3)
        assert wait_for_run(client, str(run.id), timeout=30)["status"] == "completed"


def test_a_runs_message_is_acknowledged_when_the_run_starts(
    client: ApiClient, settings: Settings, celery_app: Celery, channel: Any
) -> None:
    # A run that outlives RabbitMQ's consumer_timeout must not hold its delivery: it is acked
    # at the start, and a worker that dies mid-run leaves nothing to redeliver; the lease and
    # the reaper hand the run on.
    run_id = submit(client, "cooperative_wait", {"seconds": 30})
    # A prefork worker, as production runs: the solo pool's event loop sends even an early ack
    # only once the task returns (docs/architecture.md, "Brokers").
    worker = celery_process(
        *worker_args("runs", concurrency=2),
        env=worker_env(settings, RUN_LEASE_SECONDS="6"),
        own_group=True,
    )
    try:
        wait_for_run(client, run_id, until=frozenset({"running"}), timeout=30)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and its pool, as a host that died
        worker.wait(timeout=10)
    time.sleep(1)  # RabbitMQ requeues a dead consumer's unacked deliveries at once

    assert ready(channel, "runs") == 0
    with worker_subprocess(settings, "runs,maintenance", RUN_LEASE_SECONDS="6"):
        taken_over = wait_until(
            lambda: reaped_and_running(client, celery_app, run_id), 30, "the run taken over"
        )
    assert taken_over["attempts"] == 2


def reaped_and_running(client: ApiClient, celery_app: Celery, run_id: str) -> dict[str, Any] | None:
    """Fire the reaper once; the run's view once a second attempt is running."""
    celery_app.send_task(TASK_REQUEUE_STALE_RUNS, kwargs={"older_than_seconds": 0})
    time.sleep(0.5)
    view: dict[str, Any] = client.get(f"/api/runs/{run_id}").json()
    return view if view["status"] == "running" and view["attempts"] == 2 else None


def test_queue_depths_are_read_from_rabbitmq(
    client: ApiClient, admin: ApiClient, anonymous: ApiClient
) -> None:
    submit_echo(client)
    submit_echo(client)

    body = admin.get("/api/admin/queues").json()

    assert body["broker"] == "rabbitmq"
    assert {q["name"]: q["depth"] for q in body["queues"]}["runs"] == 2
    assert body["unacked"] is None
    scraped = anonymous.get("/metrics").text
    assert 'conveyor_queue_depth{queue="runs"} 2.0' in scraped


def test_conveyor_status_reads_the_queues_from_rabbitmq(
    client: ApiClient, settings: Settings
) -> None:
    submit_echo(client)

    report, error = read_queues(settings)

    assert error is None
    assert report is not None
    assert report.broker == "rabbitmq"
    assert {q.name: q.depth for q in report.queues}["runs"] == 1
