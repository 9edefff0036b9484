"""The Stripe webhook inbox: a delivery is verified, stored once in `stripe_events`, and each
event's processing state (received → processed / skipped / ignored / failed) is kept there, so
nothing Stripe sent is lost or applied twice (conveyor/billing/handlers.py applies them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import stripe
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from conveyor.db import Connection, Database
from conveyor.errors import (
    InvalidInput,
    InvalidJSON,
    InvalidSignature,
    PaymentsNotConfigured,
    StripeEventNotFound,
)
from conveyor.pagination import Listing, newest_first

EventStatus = Literal["received", "processed", "skipped", "ignored", "failed"]
FINAL_STATUSES: frozenset[str] = frozenset({"processed", "skipped", "ignored"})

CHECKOUT_COMPLETED = "checkout.session.completed"
CHECKOUT_ASYNC_SUCCEEDED = "checkout.session.async_payment_succeeded"
CHECKOUT_ASYNC_FAILED = "checkout.session.async_payment_failed"
SUBSCRIPTION_CREATED = "customer.subscription.created"
SUBSCRIPTION_UPDATED = "customer.subscription.updated"
SUBSCRIPTION_DELETED = "customer.subscription.deleted"
INVOICE_PAID = "invoice.paid"
INVOICE_PAYMENT_SUCCEEDED = "invoice.payment_succeeded"
INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
CHARGE_REFUNDED = "charge.refunded"
HANDLED_TYPES: frozenset[str] = frozenset(
    {
        CHECKOUT_COMPLETED,
        CHECKOUT_ASYNC_SUCCEEDED,
        CHECKOUT_ASYNC_FAILED,
        SUBSCRIPTION_CREATED,
        SUBSCRIPTION_UPDATED,
        SUBSCRIPTION_DELETED,
        INVOICE_PAID,
        INVOICE_PAYMENT_SUCCEEDED,
        INVOICE_PAYMENT_FAILED,
        CHARGE_REFUNDED,
    }
)

# A `received` event younger than this is probably still queued: the reconciler leaves it alone.
STUCK_AFTER_SECONDS = 120
# Failed events wait 1, 2, 4, ... minutes between attempts, at most this long.
MAX_BACKOFF_SECONDS = 6 * 3600
EVENT_COLUMNS = (
    "id, type, created, livemode, status, attempts, last_error, received_at, next_attempt_at, "
    "processed_at"
)


class EventData(BaseModel):
    """`data` of a Stripe event: the object it is about."""

    model_config = ConfigDict(extra="ignore")

    object: dict[str, Any]


class StripeEventIn(BaseModel):
    """The fields of a Stripe event Conveyor reads; the whole payload is stored as sent."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=r"^evt_[A-Za-z0-9_]{1,250}$")
    type: str = Field(min_length=1, max_length=200)
    created: int = Field(ge=0, le=2**33)
    livemode: bool
    data: EventData


class StoredEvent(BaseModel):
    """What storing a delivery did: whether it was new, and the event's status now."""

    id: str
    inserted: bool
    status: EventStatus


class StripeEventView(BaseModel):
    """One stored event as admins see it (without its payload)."""

    id: str
    type: str
    created: datetime
    livemode: bool
    status: EventStatus
    attempts: int
    last_error: str | None
    received_at: datetime
    next_attempt_at: datetime
    processed_at: datetime | None


def verify_signature(
    payload: bytes, header: str | None, secrets: Sequence[str], tolerance: int
) -> None:
    """Check `Stripe-Signature` (`t=...,v1=HMAC-SHA256(t.payload)`) against each secret (several
    during a rotation); InvalidSignature says what is wrong."""
    if not secrets:
        raise PaymentsNotConfigured(
            "Webhooks cannot be verified: set STRIPE_WEBHOOK_SECRET (comma-separate several "
            "while rotating)."
        )
    if not header:
        raise InvalidSignature("The Stripe-Signature header is missing.")
    problems = []
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
            return
        except stripe.SignatureVerificationError as exc:
            problems.append(str(exc.user_message or exc))
        except UnicodeDecodeError:
            raise InvalidSignature("The body is not UTF-8, so Stripe did not sign it.") from None
    if any("tolerance" in problem for problem in problems):
        raise InvalidSignature(
            f"The signature's timestamp is more than {tolerance} s old: a replayed or delayed "
            "delivery is refused."
        )
    raise InvalidSignature(problems[-1])


def parse_event(payload: bytes) -> StripeEventIn:
    """The event in a verified body, or InvalidJSON / InvalidInput."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise InvalidJSON("The webhook body is not JSON.") from exc
    try:
        return StripeEventIn.model_validate(document)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, "Stripe event") from exc


def store_event(db: Database, event: StripeEventIn, payload: bytes) -> StoredEvent:
    """Insert the event once (`on conflict (id) do nothing`): a type Conveyor does not handle is
    stored as `ignored`, any other as `received`. A repeat delivery returns the stored status."""
    status: EventStatus = "received" if event.type in HANDLED_TYPES else "ignored"
    with db.transaction() as conn:
        row = conn.execute(
            """
            insert into stripe_events (id, type, created, livemode, payload, status,
                                              processed_at)
            values (%(id)s, %(type)s, to_timestamp(%(created)s), %(livemode)s, %(payload)s,
                    %(status)s, case when %(status)s = 'ignored' then now() end)
            on conflict (id) do nothing
            returning status
            """,
            {
                "id": event.id,
                "type": event.type,
                "created": event.created,
                "livemode": event.livemode,
                "payload": Jsonb(json.loads(payload)),
                "status": status,
            },
        ).fetchone()
        if row is not None:
            return StoredEvent(id=event.id, inserted=True, status=row["status"])
        existing = conn.execute(
            "select status from stripe_events where id = %s", (event.id,)
        ).fetchone()
    assert existing is not None
    return StoredEvent(id=event.id, inserted=False, status=existing["status"])


def needs_processing(status: str) -> bool:
    """Whether an event in this status should be (re)queued for a worker."""
    return status not in FINAL_STATUSES


def lock_event(conn: Connection, event_id: str) -> dict[str, Any] | None:
    """The stored event, locked for this transaction (a second worker waits, then sees it final)."""
    row: dict[str, Any] | None = conn.execute(
        "select id, type, created, status, attempts, payload from stripe_events "
        "where id = %s for update",
        (event_id,),
    ).fetchone()
    return row


def mark_done(conn: Connection, event_id: str, status: str) -> None:
    """Record a final outcome of processing (processed, skipped or ignored)."""
    conn.execute(
        """
        update stripe_events
           set status = %s, attempts = attempts + 1, last_error = null, processed_at = now()
         where id = %s
        """,
        (status, event_id),
    )


def mark_failed(db: Database, event_id: str, error: str) -> None:
    """Record a failed attempt; the reconciler retries after an exponential backoff."""
    with db.transaction() as conn:
        conn.execute(
            """
            update stripe_events
               set status = 'failed', attempts = attempts + 1, last_error = left(%s, 2000),
                   next_attempt_at = now() + least(
                     interval '1 minute' * power(2, least(attempts, 20)),
                     make_interval(secs => %s))
             where id = %s and status not in ('processed', 'skipped', 'ignored')
            """,
            (error, MAX_BACKOFF_SECONDS, event_id),
        )


def due_events(
    db: Database,
    *,
    max_attempts: int,
    stuck_after_seconds: int = STUCK_AFTER_SECONDS,
    limit: int = 500,
) -> list[str]:
    """Events to queue again: failed ones whose backoff is over, and received ones that waited too
    long (their message was lost), oldest Stripe time first. Each is not due again for another
    stuck_after_seconds, so a queue that is merely behind does not collect copies every pass."""
    with db.transaction() as conn:
        rows = conn.execute(
            """
            update stripe_events
               set next_attempt_at = now() + make_interval(secs => %(stuck)s)
             where id in (
               select id from stripe_events
                where status in ('received', 'failed')
                  and next_attempt_at <= now()
                  and attempts < %(max)s
                  and (status = 'failed'
                       or received_at < now() - make_interval(secs => %(stuck)s))
                order by created, id
                limit %(limit)s
                for update skip locked)
            returning id, created
            """,
            {"max": max_attempts, "stuck": stuck_after_seconds, "limit": limit},
        ).fetchall()
    return [row["id"] for row in sorted(rows, key=lambda row: (row["created"], row["id"]))]


def stored_ids(db: Database, ids: Sequence[str]) -> set[str]:
    """Which of these event ids are already stored."""
    with db.transaction() as conn:
        rows = conn.execute(
            "select id from stripe_events where id = any(%s)", (list(ids),)
        ).fetchall()
    return {row["id"] for row in rows}


STRIPE_EVENTS = Listing(
    table="stripe_events",
    columns=EVENT_COLUMNS,
    time_column="received_at",
    id_type="text",
    where="%(status)s::text is null or status = %(status)s",
)


def list_events(
    db: Database, *, status: EventStatus | None, limit: int, cursor: str | None
) -> tuple[list[StripeEventView], str | None]:
    """Stored events, newest received first, optionally of one status (for admins)."""
    with db.transaction() as conn:
        rows, next_cursor = newest_first(
            conn,
            STRIPE_EVENTS,
            params={"status": status},
            limit=limit,
            cursor=cursor,
        )
    return [StripeEventView.model_validate(row) for row in rows], next_cursor


def requeue(db: Database, event_id: str) -> StripeEventView:
    """Make an event processable again (admin replay): a final or failed event goes back to
    `received`. Applying it again changes nothing already applied (natural keys)."""
    with db.transaction() as conn:
        row = conn.execute(
            sql.SQL(
                """
                update stripe_events
                   set status = 'received', next_attempt_at = now(), last_error = null
                 where id = %s
                returning {columns}
                """
            ).format(columns=sql.SQL(EVENT_COLUMNS)),
            (event_id,),
        ).fetchone()
    if row is None:
        raise StripeEventNotFound(f"No Stripe event {event_id!r} was received.")
    return StripeEventView.model_validate(row)
