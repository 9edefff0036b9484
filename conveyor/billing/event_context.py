"""What every Stripe event handler shares (conveyor/billing/handlers.py): the event being applied,
its outcome, the failure that makes it retried later, finding its Conveyor user, reading Stripe's
API, and the writes several handlers make (payments, notices)."""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from conveyor.billing.stripe_objects import (
    PaymentRef,
    invoice_subscription,
    line_price,
    object_id,
    parse_uuid,
)
from conveyor.db import Connection
from conveyor.errors import ConveyorError
from conveyor.events.notifications import PAYMENT_FAILED, Notification, notify
from conveyor.settings import Settings

# Metadata Conveyor puts on what checkout creates; clients may not set these keys themselves.
META_USER = "conveyor_user_id"
META_PRICE = "conveyor_price_id"
META_PLAN = "conveyor_plan"
META_CREDITS = "conveyor_credits"
BILLING_URL = "/billing"


class Outcome(enum.Enum):
    """What processing an event did (the first three are final)."""

    PROCESSED = "processed"
    SKIPPED = "skipped"
    IGNORED = "ignored"
    FAILED = "failed"
    MISSING = "missing"


class EventFailure(Exception):
    """The event cannot be applied now (no known user, a price outside the catalogue, a refund of
    a payment not seen yet); it is marked failed with this reason and retried later."""


@dataclass
class EventContext:
    """One event being applied, inside its transaction."""

    conn: Connection
    settings: Settings
    event_id: str
    created: datetime
    obj: dict[str, Any]
    notifications: list[Notification] = field(default_factory=list)
    # Users this event added credits to: their runs waiting for credits resume after commit.
    credited: set[UUID] = field(default_factory=set)

    @property
    def can_ask_stripe(self) -> bool:
        """Whether Stripe's API can be read (STRIPE_SECRET_KEY is set)."""
        return self.settings.stripe_secret_key is not None


@contextmanager
def asking_stripe(what: str) -> Iterator[None]:
    """Stripe's API unreachable or refusing, as an EventFailure: the event is retried later,
    with nothing of it applied."""
    try:
        yield
    except ConveyorError as exc:
        raise EventFailure(f"{what}: {exc.message}") from exc


def resolve_user(context: EventContext, obj: dict[str, Any]) -> UUID:
    """The Conveyor user an object belongs to: our metadata or the checkout's
    client_reference_id, else the customer's mapping, else the subscription's stored owner. A
    user found by id gets the customer mapped to them for later events."""
    metadata = obj.get("metadata") or {}
    customer = object_id(obj.get("customer"))
    for candidate in (metadata.get(META_USER), obj.get("client_reference_id")):
        user = parse_uuid(candidate)
        if user is not None:
            if customer:
                link_customer(context.conn, user, customer)
            return user
    if customer:
        row = context.conn.execute(
            "select user_id from user_accounts where stripe_customer_id = %s", (customer,)
        ).fetchone()
        if row is not None:
            return UUID(str(row["user_id"]))
    subscription = obj["id"] if str(obj.get("id", "")).startswith("sub_") else None
    subscription = subscription or object_id(obj.get("subscription"))
    if subscription:
        row = context.conn.execute(
            "select user_id from user_subscriptions where stripe_subscription_id = %s",
            (subscription,),
        ).fetchone()
        if row is not None:
            return UUID(str(row["user_id"]))
    raise EventFailure(
        f"unknown user: {obj.get('object', 'object')} {obj.get('id')} has no "
        f"client_reference_id or {META_USER} metadata, and customer {customer or '(none)'} is "
        "not mapped to a user"
    )


def link_customer(conn: Connection, user: UUID, customer: str) -> None:
    """Map a Stripe customer to a user who has none yet; a customer mapped to someone else
    fails the event instead of moving money between users."""
    conn.execute("select conveyor_ensure_account(%s)", (user,))
    row = conn.execute(
        "select user_id from user_accounts where stripe_customer_id = %s", (customer,)
    ).fetchone()
    if row is not None and UUID(str(row["user_id"])) != user:
        raise EventFailure(f"customer {customer} belongs to another user, not {user}")
    conn.execute(
        "update user_accounts set stripe_customer_id = %s, updated_at = now() "
        "where user_id = %s and stripe_customer_id is null",
        (customer, user),
    )


def record_payment(
    context: EventContext,
    *,
    payment_id: str,
    user: UUID,
    paid_with: Sequence[PaymentRef],
    credits: int,
    amount: int,
    currency: str | None,
) -> bool:
    """Remember what a purchase bought and the payments it was paid with, once, for refunds.
    Returns whether the purchase was new (False: an earlier event recorded it)."""
    row = context.conn.execute(
        """
        insert into stripe_payments (id, user_id, credits, amount, currency)
        values (%s, %s, %s, %s, %s)
        on conflict (id) do nothing
        returning true as inserted
        """,
        (payment_id, user, credits, amount, currency),
    ).fetchone()
    for ref in paid_with:
        link_payment(context.conn, payment_id, ref)
    return row is not None


def link_payment(conn: Connection, payment_id: str, ref: PaymentRef) -> None:
    """Record that a payment (its PaymentIntent and/or charge) paid for a purchase, once."""
    conn.execute(
        "insert into stripe_payment_parts (payment_id, payment_intent, charge) "
        "values (%s, %s, %s) on conflict do nothing",
        (payment_id, ref.payment_intent, ref.charge),
    )


def payment_failed(
    context: EventContext, user: UUID, message: str, metadata: dict[str, Any]
) -> None:
    """Notify the user of a failed payment, once per event."""
    note = notify(
        context.conn,
        user,
        PAYMENT_FAILED,
        "error",
        "Payment failed",
        message,
        action_url=BILLING_URL,
        metadata=metadata,
        dedupe_key=f"stripe:{context.event_id}",
    )
    if note is not None:
        context.notifications.append(note)


def plan_for_price(context: EventContext, price: str | None) -> str:
    """The plan a catalogue price sells, or EventFailure."""
    entry = context.settings.stripe_prices.get(price or "")
    if entry is None or entry.plan is None:
        raise EventFailure(f"price {price!r} is not a plan in STRIPE_PRICES")
    return entry.plan


def invoice_plan(context: EventContext, invoice: dict[str, Any]) -> str | None:
    """The plan an invoice renews: from its line's price, else from the stored subscription."""
    for line in (invoice.get("lines") or {}).get("data") or []:
        price = line_price(line)
        entry = context.settings.stripe_prices.get(price or "")
        if entry is not None and entry.plan is not None:
            return entry.plan
    subscription = invoice_subscription(invoice)
    if subscription is None:
        return None
    row = context.conn.execute(
        "select plan_id from user_subscriptions where stripe_subscription_id = %s",
        (subscription,),
    ).fetchone()
    if row is None:
        raise EventFailure(
            f"invoice {invoice['id']}: its price is not in STRIPE_PRICES and subscription "
            f"{subscription} is not recorded yet; retried later"
        )
    return str(row["plan_id"])
