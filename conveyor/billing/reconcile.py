"""The webhook reconciler: events that never arrived are fetched from Stripe's API and stored,
and stored events that are not final (failed, or waiting too long) are queued again."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from conveyor.billing import inbox
from conveyor.billing.stripe_api import client_for, recent_events
from conveyor.db import Database
from conveyor.errors import ConveyorError
from conveyor.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    """What one reconciler pass did."""

    fetched: int  # events listed by Stripe's API
    recovered: int  # of those, never received by the webhook and now stored
    requeued: int  # stored events queued for another attempt
    api_error: str | None = None

    def counts(self) -> dict[str, int]:
        """The figures, for logs and task results."""
        return {"fetched": self.fetched, "recovered": self.recovered, "requeued": self.requeued}


def reconcile(
    db: Database, settings: Settings, enqueue: Callable[[str], object]
) -> ReconcileReport:
    """One pass: recover missed events (when STRIPE_SECRET_KEY is set and
    STRIPE_RECONCILE_FROM_API is on), then queue every due event with enqueue(event_id)."""
    fetched = 0
    recovered: list[str] = []
    api_error = None
    if settings.stripe_reconcile_from_api and settings.stripe_secret_key is not None:
        try:
            fetched, recovered = recover_missed(db, settings)
        except ConveyorError as exc:
            # Stripe unreachable is no reason to stop retrying what is already stored.
            api_error = exc.message
            log.warning("stripe_reconcile_api_failed", error=exc.message)
    due = due_events(db, settings)
    for event_id in [*recovered, *(e for e in due if e not in recovered)]:
        enqueue(event_id)
    return ReconcileReport(fetched, len(recovered), len(due), api_error)


def requeue_due(db: Database, settings: Settings, enqueue: Callable[[str], object]) -> int:
    """The local half of a pass, run every 30 s: queue the stored events that are due (a retry
    whose backoff is over, or one whose message was lost, e.g. stored while Redis was down)."""
    due = due_events(db, settings)
    for event_id in due:
        enqueue(event_id)
    return len(due)


def due_events(db: Database, settings: Settings) -> list[str]:
    """Stored events to queue again, under the settings' attempt limit and stuck delay."""
    return inbox.due_events(
        db,
        max_attempts=settings.stripe_event_max_attempts,
        stuck_after_seconds=settings.stripe_event_stuck_seconds,
    )


def recover_missed(db: Database, settings: Settings) -> tuple[int, list[str]]:
    """Store the recent events Stripe lists that the webhook never delivered, oldest first;
    returns how many were listed and the ids newly stored."""
    events = list(recent_events(client_for(settings), sorted(inbox.HANDLED_TYPES)))
    known = inbox.stored_ids(db, [str(event.get("id")) for event in events])
    recovered = []
    for document in reversed(events):
        if document.get("id") in known:
            continue
        payload = json.dumps(document).encode()
        stored = inbox.store_event(db, inbox.parse_event(payload), payload)
        if stored.inserted:
            recovered.append(stored.id)
    return len(events), recovered
