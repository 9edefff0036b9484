"""Outbound webhooks: endpoints, the outbox of events, deliveries, signing and sending, URL
safety."""

from conveyor.outbound.outbox import (
    DeliveryNotFound,
    due_deliveries,
    list_deliveries,
    record_quota_threshold,
    record_run_finished,
    record_waiting_for_credits,
    redeliver,
)

__all__ = [
    "DeliveryNotFound",
    "due_deliveries",
    "list_deliveries",
    "record_quota_threshold",
    "record_run_finished",
    "record_waiting_for_credits",
    "redeliver",
]
