"""Stripe: checkout sessions, the webhook inbox, the handlers that apply events to plans and
credits, reconciliation."""

from conveyor.billing.event_context import Outcome
from conveyor.billing.handlers import process_event

__all__ = [
    "Outcome",
    "process_event",
]
