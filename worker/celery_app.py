"""Build the Celery app from settings; web (publish only) and the worker both use this."""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from conveyor.constants import QUEUES
from conveyor.settings import Settings
from worker.heartbeat import Heartbeat

TASK_MODULES = [
    "tasks.runs",
    "tasks.maintenance",
    "tasks.usage",
    "tasks.webhooks",
    "tasks.outbound",
    "tasks.analytics",
]


def create_celery(settings: Settings) -> Celery:
    """A Celery app on the settings' Redis; web uses it only to publish, by task name."""
    broker = settings.redis_url
    if broker is None:
        raise RuntimeError("REDIS_URL is not set: set it, or start everything with `conveyor run`")
    celery = Celery("conveyor", broker=broker, include=TASK_MODULES)
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # Postgres holds run state; a result backend would only cost every publish (PERF-NOTES).
        task_ignore_result=True,
        result_backend=None,
        # A task is acknowledged after it ran, and handed back if its worker process died.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # One direct exchange per queue: with defaults all queues share one binding and a message
        # would be copied into every queue.
        task_queues=[
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES
        ],
        task_default_queue="runs",
        task_default_exchange="runs",
        task_default_routing_key="runs",
        task_routes={
            f"{name}.*": {"queue": name, "exchange": name, "routing_key": name} for name in QUEUES
        },
        # Redis redelivers an unacked message after this; longer than any run's lease.
        broker_transport_options={
            "visibility_timeout": max(3600, settings.run_lease_seconds * 2),
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
        },
        broker_connection_retry_on_startup=True,
        # Submit answers fast when Redis is down: the run is stored, the reaper republishes it.
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
        # beat_schedule.JOBS, fired by one scheduler at a time, once per period.
        beat_scheduler="worker.scheduler:ConveyorScheduler",
    )
    celery.steps["worker"].add(Heartbeat)  # `conveyor:workers:<hostname>`, see heartbeat.py
    celery.conveyor_settings = settings
    return celery
