"""Publish Celery tasks by name, so the web process never imports task bodies."""

from __future__ import annotations

from typing import Any

from conveyor.settings import Settings
from worker.celery_app import create_celery, send_or_log


class Enqueuer:
    """A publish-only Celery app for the web process."""

    def __init__(self, settings: Settings) -> None:
        self._celery = create_celery(settings)

    def enqueue(self, task_name: str, *args: Any) -> bool:
        """Publish task_name(*args); False when the broker is unreachable (the caller's outbox row
        stays and the reaper publishes it later)."""
        return send_or_log(self._celery, task_name, *args)

    def close(self) -> None:
        """Close the app's broker connections."""
        self._celery.close()
