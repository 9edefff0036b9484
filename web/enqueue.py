"""Publish Celery tasks by name, so the web process never imports task bodies."""

from __future__ import annotations

from typing import Any

import structlog

from conveyor.settings import Settings
from worker.celery_app import create_celery

log = structlog.get_logger(__name__)


class Enqueuer:
    """A publish-only Celery app for the web process."""

    def __init__(self, settings: Settings) -> None:
        self._celery = create_celery(settings)

    def enqueue(self, task_name: str, *args: Any) -> bool:
        """Publish task_name(*args); False when the broker is unreachable (the caller's outbox row
        stays and the reaper publishes it later)."""
        try:
            self._celery.send_task(task_name, args=list(args))
        except Exception as exc:  # kombu raises a zoo of types for one outage
            log.warning("enqueue_failed", task=task_name, error=f"{type(exc).__name__}: {exc}")
            return False
        return True
