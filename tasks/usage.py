"""Usage reported through `POST /api/usage`, recorded one batch per transaction."""

from __future__ import annotations

import structlog
from celery import shared_task

from conveyor.constants import TASK_RECORD_USAGE
from conveyor.notifications import publish_notifications
from conveyor.usage import QUOTA_THRESHOLD_CROSSED
from conveyor.usage_ingest import record_batch_json
from worker.base import ConveyorTask

log = structlog.get_logger(__name__)


@shared_task(bind=True, base=ConveyorTask, name=TASK_RECORD_USAGE)
def record_usage_batch(self: ConveyorTask, events: str) -> dict[str, int]:
    """Record a batch (the JSON array web validated and wrote with events_json) exactly once.
    The message is acknowledged only after the transaction (acks_late): a worker that dies
    mid-batch leaves it to be redelivered, and running it again records and charges nothing twice
    (the idempotency keys)."""
    result = record_batch_json(self.resources.db, events)
    publish_notifications(self.resources.publisher, result.notifications)
    for crossed in result.thresholds:
        log.info(
            QUOTA_THRESHOLD_CROSSED,
            user_id=str(crossed.user_id),
            percent=crossed.percent,
            event_id=crossed.event_id,
        )
    return result.counts()
