"""Outbound webhooks: one delivery attempt per message, and the job that queues what is due."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import structlog
from celery import Celery, shared_task

from conveyor import metrics, outbound
from conveyor.constants import TASK_DELIVER_WEBHOOK, TASK_REQUEUE_WEBHOOK_DELIVERIES
from conveyor.events.notifications import publish_notifications
from conveyor.outbound import delivery as webhook_delivery
from worker.base import ConveyorTask, PeriodicTask
from worker.celery_app import send_or_log

log = structlog.get_logger(__name__)
# A delivery whose message should have been handled this long ago is queued again.
REQUEUE_AFTER_SECONDS = 60


def queue_deliveries(
    app: Celery, delivery_ids: Sequence[UUID | str], *, countdown: float | None = None
) -> None:
    """Wake a worker for each delivery (after the commit that created them). A broker outage is
    only logged: the rows are the outbox, and the re-queue job sends them once it is back."""
    for delivery_id in delivery_ids:
        if not send_or_log(app, TASK_DELIVER_WEBHOOK, str(delivery_id), countdown=countdown):
            return  # the broker is down: the rest would fail the same way


@shared_task(bind=True, base=ConveyorTask, name=TASK_DELIVER_WEBHOOK)
def deliver_webhook(self: ConveyorTask, delivery_id: str) -> str:
    """One attempt at a delivery; a failure schedules the next one (the re-queue job is the
    safety net if that message is lost)."""
    res = self.resources
    result = webhook_delivery.deliver(res.db, res.settings, UUID(delivery_id))
    publish_notifications(res.publisher, result.notifications)
    metrics.OUTBOUND_WEBHOOKS.labels(result.outcome.value).inc()
    if result.retry_in is not None:
        queue_deliveries(self.app, [delivery_id], countdown=result.retry_in)
    log.info("webhook_delivery", delivery_id=delivery_id, outcome=result.outcome.value)
    return result.outcome.value


@shared_task(bind=True, base=PeriodicTask, name=TASK_REQUEUE_WEBHOOK_DELIVERIES)
def requeue_webhook_deliveries(
    self: PeriodicTask, older_than_seconds: float | None = None, period: str | None = None
) -> int:
    """Queue again the pending deliveries whose message was lost or whose worker died."""
    age = REQUEUE_AFTER_SECONDS if older_than_seconds is None else older_than_seconds
    due = outbound.due_deliveries(self.resources.db, older_than_seconds=age)
    queue_deliveries(self.app, due)
    return len(due)
