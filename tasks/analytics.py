"""The analytics push: tells every web process that fresh figures are due."""

from __future__ import annotations

from celery import shared_task

from conveyor.ops.analytics import TASK_PUSH_ANALYTICS, push_analytics
from worker.base import PeriodicTask


@shared_task(bind=True, base=PeriodicTask, name=TASK_PUSH_ANALYTICS)
def push(self: PeriodicTask, period: str | None = None) -> None:
    """Signal the analytics websockets to recompute and push their KPIs and series."""
    push_analytics(self.resources.publisher)
