"""Usage reported through `POST /api/usage`: stored batches recorded one per transaction, and
the job that republishes batches whose message was lost."""

from __future__ import annotations

from uuid import UUID

import structlog
from celery import shared_task

from conveyor.constants import TASK_RECORD_USAGE, TASK_REQUEUE_USAGE_BATCHES
from conveyor.events.notifications import publish_notifications
from conveyor.ledger.ingest import (
    BatchResult,
    batches_to_republish,
    record_batch_json,
    record_stored_batch,
)
from conveyor.ledger.usage import QUOTA_THRESHOLD_CROSSED
from worker.base import ConveyorTask, PeriodicTask

log = structlog.get_logger(__name__)


@shared_task(bind=True, base=ConveyorTask, name=TASK_RECORD_USAGE)
def record_usage_batch(self: ConveyorTask, batch_id: str) -> dict[str, int]:
    """Record a stored batch (web's usage_batches row) exactly once and delete its row in the
    same transaction. Acknowledged only after it (acks_late): a worker that dies mid-batch leaves
    the message to be redelivered and the row to be republished, and a batch recorded already
    is found gone and skipped."""
    if batch_id.startswith("["):
        # Queued before batches were stored, this message carries the events themselves: it is
        # recorded as it was then, so a rolling deploy drops none.
        result: BatchResult | None = record_batch_json(self.resources.db, batch_id)
    else:
        result = record_stored_batch(self.resources.db, UUID(batch_id))
    if result is None:
        return {"already_recorded": 1}
    publish_notifications(self.resources.publisher, result.notifications)
    for crossed in result.thresholds:
        log.info(
            QUOTA_THRESHOLD_CROSSED,
            user_id=str(crossed.user_id),
            percent=crossed.percent,
            event_id=crossed.event_id,
        )
    return result.counts()


@shared_task(bind=True, base=PeriodicTask, name=TASK_REQUEUE_USAGE_BATCHES)
def requeue_usage_batches(
    self: PeriodicTask, older_than_seconds: int | None = None, period: str | None = None
) -> int:
    """Publish again the stored batches no worker recorded in time (a lost message, or Redis
    down when the batch was accepted)."""
    res = self.resources
    threshold = (
        res.settings.requeue_after_seconds if older_than_seconds is None else older_than_seconds
    )
    batch_ids = batches_to_republish(res.db, older_than_seconds=threshold)
    for batch_id in batch_ids:
        self.app.send_task(TASK_RECORD_USAGE, args=[str(batch_id)])
    return len(batch_ids)
