"""Build the Celery app from settings; web (publish only) and the worker both use this."""

from __future__ import annotations

import math
from typing import Any

import structlog
from celery import Celery

from conveyor.constants import QUEUES
from conveyor.settings import Settings
from worker import broker
from worker.broker_config import broker_config, is_rabbitmq
from worker.heartbeat import Heartbeat
from worker.metrics_http import MetricsServer

log = structlog.get_logger(__name__)

TASK_MODULES = [
    "tasks.runs",
    "tasks.maintenance",
    "tasks.usage",
    "tasks.billing",
    "tasks.outbound",
    "tasks.analytics",
]


def create_celery(settings: Settings) -> Celery:
    """A Celery app on the settings' broker (BROKER_URL, else REDIS_URL); web uses it only to
    publish, by task name."""
    broker_url = settings.celery_broker_url()
    if broker_url is None:
        raise RuntimeError("REDIS_URL is not set: set it, or start everything with `conveyor run`")
    broker.install()  # a worker survives a Redis restart (see worker/broker.py)
    celery = Celery("conveyor", broker=broker_url, include=TASK_MODULES)
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # Postgres holds run state; a result backend would only cost every publish (PERF-NOTES).
        task_ignore_result=True,
        result_backend=None,
        # A task is acknowledged after it ran, and handed back if its worker process died; runs
        # and lanes are acknowledged when they start (tasks/runs.py says why).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="runs",
        task_default_exchange="runs",
        task_default_routing_key="runs",
        # Routed by queue alone, Celery publishes through the anonymous exchange straight to the
        # queue's list; naming the exchange costs kombu a binding lookup (SMEMBERS) per publish.
        task_routes={f"{name}.*": {"queue": name} for name in QUEUES},
        # The queues and the transport's options: worker/broker_config.py.
        **broker_config(settings, broker_url),
        broker_connection_retry_on_startup=True,
        # Submit answers fast when the broker is down: the run is stored, the reaper republishes it.
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        timezone=settings.timezone,
        enable_utc=True,
        # conveyor.ops.jobs.JOBS, fired by one scheduler at a time, once per period.
        beat_scheduler="worker.scheduler:ConveyorScheduler",
    )
    celery.steps["worker"].add(Heartbeat)  # `conveyor:workers:<hostname>`, see heartbeat.py
    celery.steps["worker"].add(MetricsServer)  # WORKER_METRICS_PORT, see metrics_http.py
    celery.conveyor_settings = settings
    return celery


def send_or_log(app: Celery, task_name: str, *args: Any, countdown: float | None = None) -> bool:
    """Publish task_name(*args); False, logged, when the broker refuses. For callers whose row in
    Postgres is the outbox, so a requeue job sends the task later."""
    if countdown is not None and countdown > 0 and is_rabbitmq(str(app.conf.broker_url)):
        # Native delayed delivery counts whole seconds and refuses anything under one
        # ("countdown must be a positive number", kombu 5.7): wait the next whole second.
        countdown = math.ceil(countdown)
    try:
        app.send_task(task_name, args=list(args), countdown=countdown)
    except Exception as exc:  # kombu raises a zoo of types for one outage
        log.warning("enqueue_failed", task=task_name, error=f"{type(exc).__name__}: {exc}")
        return False
    return True
