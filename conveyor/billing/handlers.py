"""Stripe events applied to plans and credits: each event once, in one transaction, in any order.

Once per event: the event row is locked and its status made final in the same transaction as the
change. Once per thing: credit grants are keyed by the checkout session or invoice id, refunds by
what was already taken back, subscription state by the time of the event it came from and, when
that cannot order two states, by what Stripe's API says (conveyor/billing/subscriptions.py).
Checkouts are applied here; subscriptions, invoices and refunds in their own modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
import structlog

from conveyor.billing import inbox
from conveyor.billing.event_context import (
    META_CREDITS,
    META_PLAN,
    META_PRICE,
    EventContext,
    EventFailure,
    Outcome,
    payment_failed,
    plan_for_price,
    record_payment,
    resolve_user,
)
from conveyor.billing.invoices import invoice_paid, invoice_payment_failed
from conveyor.billing.refunds import charge_refunded
from conveyor.billing.stripe_objects import PaymentRef, object_id
from conveyor.billing.subscriptions import SubscriptionState, store_state, subscription_changed
from conveyor.db import Database
from conveyor.events.notifications import Notification
from conveyor.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class Processed:
    """The outcome of processing one event, and the notifications to publish after commit."""

    outcome: Outcome
    error: str | None = None
    notifications: list[Notification] = field(default_factory=list)
    event_type: str | None = None
    credited: set[UUID] = field(default_factory=set)


def process_event(db: Database, settings: Settings, event_id: str) -> Processed:
    """Apply a stored event once. Safe to call any number of times, concurrently too: the event
    row lock serialises callers and a final status ends the work."""
    event_type: str | None = None
    try:
        with db.transaction() as conn:
            row = inbox.lock_event(conn, event_id)
            if row is None:
                return Processed(Outcome.MISSING)
            event_type = row["type"]
            if row["status"] in inbox.FINAL_STATUSES:
                return Processed(Outcome(row["status"]), event_type=event_type)
            context = EventContext(
                conn=conn,
                settings=settings,
                event_id=event_id,
                created=row["created"],
                obj=row["payload"]["data"]["object"],
            )
            outcome = apply(row["type"], context)
            inbox.mark_done(conn, event_id, outcome.value)
    except EventFailure as exc:
        # The transaction rolled back whatever the handler did; only the failure is recorded.
        inbox.mark_failed(db, event_id, str(exc))
        log.warning("stripe_event_failed", event_id=event_id, error=str(exc))
        return Processed(Outcome.FAILED, str(exc), event_type=event_type)
    except (psycopg.IntegrityError, psycopg.DataError) as exc:
        # A value the schema refuses (an unknown plan id in metadata, a negative amount).
        error = f"refused by the database: {exc}"
        inbox.mark_failed(db, event_id, error)
        log.warning("stripe_event_refused", event_id=event_id, error=error)
        return Processed(Outcome.FAILED, error, event_type=event_type)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A payload shaped unlike Stripe's documented objects: kept, visible to admins, retried.
        error = f"malformed {type(exc).__name__}: {exc}"
        inbox.mark_failed(db, event_id, error)
        log.exception("stripe_event_malformed", event_id=event_id)
        return Processed(Outcome.FAILED, error, event_type=event_type)
    return Processed(
        outcome,
        notifications=context.notifications,
        event_type=event_type,
        credited=context.credited,
    )


def apply(event_type: str, context: EventContext) -> Outcome:
    """Dispatch one event to what it changes."""
    handler = HANDLERS.get(event_type)
    if handler is None:
        return Outcome.IGNORED
    return handler(context)


def checkout_completed(context: EventContext) -> Outcome:
    """A paid checkout: a credit pack is granted once (reference: the session id); a subscription
    is recorded active with its plan unless a later state of it is stored."""
    session = context.obj
    user = resolve_user(context, session)
    metadata = session.get("metadata") or {}
    if session.get("mode") == "subscription":
        subscription = object_id(session.get("subscription"))
        if subscription is None:
            raise EventFailure(f"subscription checkout {session['id']} names no subscription")
        plan = metadata.get(META_PLAN) or plan_for_price(context, metadata.get(META_PRICE))
        state = SubscriptionState(
            subscription=subscription,
            customer=object_id(session.get("customer")),
            price=metadata.get(META_PRICE),
            plan=plan,
            status="active",
            period=(None, None),
            cancel_at_period_end=False,
        )
        return store_state(context, user, state)
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        return Outcome.PROCESSED  # paid later: checkout.session.async_payment_succeeded grants
    return grant_credit_pack(context, user, session)


def checkout_async_failed(context: EventContext) -> Outcome:
    """A delayed payment (bank debit) of a checkout failed: nothing was granted; tell the user."""
    session = context.obj
    user = resolve_user(context, session)
    payment_failed(
        context,
        user,
        "Your payment did not go through, so nothing was charged or added. Try again with "
        "another payment method.",
        {"checkout_session": session["id"]},
    )
    return Outcome.PROCESSED


def grant_credit_pack(context: EventContext, user: UUID, session: dict[str, Any]) -> Outcome:
    """The credits a paid checkout session bought, once per session."""
    metadata = session.get("metadata") or {}
    raw_credits = metadata.get(META_CREDITS)
    if raw_credits is None:
        raise EventFailure(
            f"checkout session {session['id']} carries no {META_CREDITS} metadata: it was not "
            "created by Conveyor's checkout, so what it bought is unknown"
        )
    credits = int(raw_credits)
    if credits <= 0:
        raise EventFailure(f"checkout session {session['id']}: {META_CREDITS} must be positive")
    context.conn.execute(
        "select * from add_credits(%s, %s, 'purchase', %s, %s)",
        (
            user,
            credits,
            f"Credit pack ({metadata.get(META_PRICE, 'unknown price')})",
            session["id"],
        ),
    )
    context.credited.add(user)
    intent = object_id(session.get("payment_intent"))
    record_payment(
        context,
        payment_id=session["id"],
        user=user,
        paid_with=[PaymentRef(intent, None)] if intent else [],
        credits=credits,
        amount=int(session.get("amount_total") or 0),
        currency=session.get("currency"),
    )
    return Outcome.PROCESSED


HANDLERS = {
    inbox.CHECKOUT_COMPLETED: checkout_completed,
    inbox.CHECKOUT_ASYNC_SUCCEEDED: checkout_completed,
    inbox.CHECKOUT_ASYNC_FAILED: checkout_async_failed,
    inbox.SUBSCRIPTION_CREATED: subscription_changed,
    inbox.SUBSCRIPTION_UPDATED: subscription_changed,
    inbox.SUBSCRIPTION_DELETED: subscription_changed,
    inbox.INVOICE_PAID: invoice_paid,
    inbox.INVOICE_PAYMENT_SUCCEEDED: invoice_paid,
    inbox.INVOICE_PAYMENT_FAILED: invoice_payment_failed,
    inbox.CHARGE_REFUNDED: charge_refunded,
}
