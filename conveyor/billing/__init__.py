"""Stripe: checkout sessions, the webhook inbox, the handlers that apply events to plans and
credits, reconciliation."""

from conveyor.billing.handlers import (
    Outcome,
    process_event,
)

__all__ = [
    "Outcome",
    "process_event",
]
