"""What Celery's configuration depends on the broker: Redis lists or RabbitMQ quorum queues.
Why each choice: docs/architecture.md, "Brokers"."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from kombu import Exchange, Queue

from conveyor.constants import QUEUES, RABBITMQ_SCHEMES
from conveyor.settings import Settings


def is_rabbitmq(broker_url: str) -> bool:
    """Whether the URL names a RabbitMQ (AMQP 0-9-1) broker rather than Redis."""
    return urlsplit(broker_url).scheme in RABBITMQ_SCHEMES


def broker_config(settings: Settings, broker_url: str) -> dict[str, Any]:
    """Celery settings for the broker at broker_url."""
    if is_rabbitmq(broker_url):
        return rabbitmq_config()
    return redis_config(settings)


def redis_config(settings: Settings) -> dict[str, Any]:
    """Redis: one list per queue, unacknowledged messages restored after a visibility timeout."""
    return {
        # One direct exchange per queue: with defaults all queues share one binding and a message
        # would be copied into every queue.
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES
        ],
        # Redis redelivers an unacked message after this; longer than any run's lease.
        "broker_transport_options": {
            "visibility_timeout": max(
                settings.broker_visibility_timeout_seconds, settings.run_lease_seconds * 2
            ),
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            # Look for messages past their visibility timeout every 10 s (kombu's default scans
            # only every tenth look, ~100 s): a killed worker's batch comes back sooner.
            "unacked_restore_throttle": 1,
        },
    }


def rabbitmq_config() -> dict[str, Any]:
    """RabbitMQ: replicated quorum queues, publisher confirms, native delayed delivery."""
    return {
        # Quorum queues survive a node's loss (classic queues are deprecated for that). Topic
        # exchanges, because Celery's native delayed delivery (a countdown waits in RabbitMQ's
        # celery_delayed_* queues, not in a worker's memory) does not route through direct ones.
        "task_queues": [
            Queue(
                name,
                Exchange(name, type="topic"),
                routing_key=name,
                queue_arguments={"x-queue-type": "quorum"},
            )
            for name in QUEUES
        ],
        "task_default_queue_type": "quorum",
        "task_default_exchange_type": "topic",
        "broker_transport_options": {
            # A publish returns once RabbitMQ has the message: a submit that answered 202 has
            # its run's message in the broker (or in Postgres, for the requeue job to send).
            "confirm_publish": True,
            "connect_timeout": 2,
        },
    }
