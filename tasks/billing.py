"""Stripe events: applied once each (conveyor/billing/handlers.py), and the reconciler that
retries."""

from __future__ import annotations

import structlog
from celery import shared_task

from conveyor import billing, metrics
from conveyor.billing.reconcile import reconcile, requeue_due
from conveyor.constants import (
    TASK_EXECUTE_RUN,
    TASK_PROCESS_STRIPE_EVENT,
    TASK_RECONCILE_STRIPE_EVENTS,
    TASK_REQUEUE_STRIPE_EVENTS,
)
from conveyor.events.notifications import publish_notifications
from conveyor.runs import credit_waits
from worker.base import ConveyorTask, PeriodicTask
from worker.celery_app import send_or_log

log = structlog.get_logger(__name__)


@shared_task(bind=True, base=ConveyorTask, name=TASK_PROCESS_STRIPE_EVENT)
def process_stripe_event(self: ConveyorTask, event_id: str) -> str:
    """Apply a stored Stripe event once; a repeat (redelivery, replay, reconciler) changes
    nothing. A failure is recorded on the event for the reconciler, not raised."""
    result = billing.process_event(self.resources.db, self.resources.settings, event_id)
    publish_notifications(self.resources.publisher, result.notifications)
    for user in result.credited:
        # Credits arrived: runs parked for credits run their step again (a refused publish
        # leaves a stale queued run for the requeue job).
        resumed = credit_waits.resume_credit_waiters(self.resources.db, user)
        for run_id in credit_waits.publish_resumed(self.resources.publisher, resumed):
            send_or_log(self.app, TASK_EXECUTE_RUN, str(run_id))
    metrics.WEBHOOK_EVENTS.labels(result.event_type or "unknown", result.outcome.value).inc()
    log.info("stripe_event", event_id=event_id, outcome=result.outcome.value, error=result.error)
    return result.outcome.value


@shared_task(bind=True, base=PeriodicTask, name=TASK_RECONCILE_STRIPE_EVENTS)
def reconcile_stripe_events(self: PeriodicTask, period: str | None = None) -> dict[str, int]:
    """Every 10 minutes: store events Stripe sent that never arrived, queue the due retries."""
    report = reconcile(
        self.resources.db,
        self.resources.settings,
        lambda event_id: self.app.send_task(TASK_PROCESS_STRIPE_EVENT, args=[event_id]),
    )
    log.info("stripe_reconcile", **report.counts(), api_error=report.api_error)
    return report.counts()


@shared_task(bind=True, base=PeriodicTask, name=TASK_REQUEUE_STRIPE_EVENTS)
def requeue_stripe_events(self: PeriodicTask, period: str | None = None) -> int:
    """Every 30 s: queue stored events that are due, without asking Stripe's API."""
    return requeue_due(
        self.resources.db,
        self.resources.settings,
        lambda event_id: self.app.send_task(TASK_PROCESS_STRIPE_EVENT, args=[event_id]),
    )
