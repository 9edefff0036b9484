"""Names shared by processes: the SQL schema, Redis key prefixes, topics, Celery task and queue
names."""

from __future__ import annotations

from uuid import UUID

# Every table, type and function Conveyor creates lives in this Postgres schema (sql/).
SCHEMA = "conveyor"

REDIS_PREFIX = "conveyor:"
EVENTS_CHANNEL_PREFIX = f"{REDIS_PREFIX}events:"

# Celery task names are part of the wire contract between web and worker: keep them stable.
TASK_EXECUTE_RUN = "runs.execute"
# One lane of a run's parallel branches or map items (conveyor/runs/lanes.py).
TASK_EXECUTE_LANE = "runs.execute_lane"
TASK_REQUEUE_STALE_RUNS = "maintenance.requeue_stale_runs"
TASK_RECORD_USAGE = "usage.record_batch"
TASK_REQUEUE_USAGE_BATCHES = "maintenance.requeue_usage_batches"
TASK_PROCESS_STRIPE_EVENT = "webhooks.process_stripe_event"
TASK_RECONCILE_STRIPE_EVENTS = "maintenance.reconcile_stripe_events"
TASK_REQUEUE_STRIPE_EVENTS = "maintenance.requeue_stripe_events"
TASK_DAILY_MAINTENANCE = "maintenance.daily"
TASK_MONTHLY_QUOTA_RESET = "maintenance.monthly_quota_reset"
TASK_USAGE_ROLLUP = "maintenance.usage_rollup"
TASK_DELIVER_WEBHOOK = "webhooks.deliver"
TASK_REQUEUE_WEBHOOK_DELIVERIES = "maintenance.requeue_webhook_deliveries"

QUEUES = ("runs", "usage", "webhooks", "maintenance")
# BROKER_URL schemes: Redis lists, or RabbitMQ over AMQP 0-9-1 (py-amqp).
RABBITMQ_SCHEMES = ("amqp", "amqps", "pyamqp")
BROKER_SCHEMES = ("redis", "rediss", *RABBITMQ_SCHEMES)


def run_topic(run_id: UUID | str) -> str:
    """The subscription topic of one run."""
    return f"workflow_run:{run_id}"


def topic_channel(topic: str) -> str:
    """The Redis pub/sub channel carrying a topic's events."""
    return f"{EVENTS_CHANNEL_PREFIX}{topic}"


# Dispatch of held runs (issue 24): the periodic safety net's task and cadence, and the window
# finish_run uses when its caller gives none (Settings.dispatch_window's default).
TASK_DISPATCH_RUNS = "maintenance.dispatch_runs"
DISPATCH_EVERY_SECONDS = 5
DISPATCH_WINDOW = 16
