"""Stripe events applied to plans and credits: each event once, in one transaction, in any order.

Once per event: the event row is locked and its status made final in the same transaction as the
change. Once per thing: credit grants are keyed by the checkout session or invoice id, refunds by
what was already taken back, subscription state by the time of the event it came from (an older
event is recorded as `skipped`, so state only moves forward).
"""

from __future__ import annotations

import enum
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
    apply_subscription_state,
    invoice_plan,
    payment_failed,
    plan_for_price,
    record_payment,
    resolve_user,
)
from conveyor.billing.stripe_objects import (
    invoice_subscription,
    object_id,
    subscription_period,
    subscription_price,
)
from conveyor.db import Database
from conveyor.events.notifications import Notification
from conveyor.settings import Settings

log = structlog.get_logger(__name__)


class Outcome(enum.Enum):
    """What processing an event did (the first three are final)."""

    PROCESSED = "processed"
    SKIPPED = "skipped"
    IGNORED = "ignored"
    FAILED = "failed"
    MISSING = "missing"


@dataclass
class Processed:
    """The outcome of processing one event, and the notifications to publish after commit."""

    outcome: Outcome
    error: str | None = None
    notifications: list[Notification] = field(default_factory=list)
    event_type: str | None = None


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
    return Processed(outcome, notifications=context.notifications, event_type=event_type)


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
        applied = apply_subscription_state(
            context,
            subscription=subscription,
            user=user,
            customer=object_id(session.get("customer")),
            price=metadata.get(META_PRICE),
            plan=plan,
            status="active",
            period=(None, None),
            cancel_at_period_end=False,
        )
        return Outcome.PROCESSED if applied else Outcome.SKIPPED
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
    record_payment(
        context,
        payment_id=session["id"],
        user=user,
        payment_intent=object_id(session.get("payment_intent")),
        charge=None,
        credits=credits,
        amount=int(session.get("amount_total") or 0),
        currency=session.get("currency"),
    )
    return Outcome.PROCESSED


def subscription_changed(context: EventContext) -> Outcome:
    """customer.subscription.created / updated / deleted: store the state if it is newer than the
    stored one, then set the user's plan from their live subscriptions."""
    subscription = context.obj
    user = resolve_user(context, subscription)
    price = subscription_price(subscription)
    metadata = subscription.get("metadata") or {}
    plan = metadata.get(META_PLAN) if price is None else plan_for_price(context, price)
    if plan is None:
        raise EventFailure(f"subscription {subscription['id']} has no price Conveyor sells")
    applied = apply_subscription_state(
        context,
        subscription=subscription["id"],
        user=user,
        customer=object_id(subscription.get("customer")),
        price=price,
        plan=plan,
        status=subscription["status"],
        period=subscription_period(subscription),
        cancel_at_period_end=bool(subscription.get("cancel_at_period_end")),
    )
    return Outcome.PROCESSED if applied else Outcome.SKIPPED


def invoice_paid(context: EventContext) -> Outcome:
    """A paid subscription invoice grants the plan's monthly credits, once per invoice."""
    invoice = context.obj
    user = resolve_user(context, invoice)
    plan = invoice_plan(context, invoice)
    grant = 0
    if plan is not None:
        row = context.conn.execute(
            "select name, monthly_credit_grant from plans where id = %s", (plan,)
        ).fetchone()
        if row is None:
            raise EventFailure(f"invoice {invoice['id']}: plan {plan!r} does not exist")
        grant = int(row["monthly_credit_grant"])
        if grant > 0:
            context.conn.execute(
                "select * from add_credits(%s, %s, 'grant', %s, %s)",
                (user, grant, f"{row['name']} plan credits", f"invoice:{invoice['id']}"),
            )
    record_payment(
        context,
        payment_id=invoice["id"],
        user=user,
        payment_intent=object_id(invoice.get("payment_intent")),
        charge=object_id(invoice.get("charge")),
        credits=grant,
        amount=int(invoice.get("amount_paid") or 0),
        currency=invoice.get("currency"),
    )
    return Outcome.PROCESSED


def invoice_payment_failed(context: EventContext) -> Outcome:
    """A failed renewal: the subscription is `past_due` (unless a later state says otherwise) and
    the user is told to update their payment method."""
    invoice = context.obj
    user = resolve_user(context, invoice)
    subscription = invoice_subscription(invoice)
    if subscription is not None:
        context.conn.execute(
            """
            update user_subscriptions
               set status = 'past_due', state_at = %(at)s, state_event_id = %(event)s,
                   updated_at = now()
             where stripe_subscription_id = %(id)s and state_at <= %(at)s
               and status not in ('canceled', 'incomplete_expired')
            """,
            {"id": subscription, "at": context.created, "event": context.event_id},
        )
        context.conn.execute("select conveyor_sync_plan(%s)", (user,))
    payment_failed(
        context,
        user,
        "We could not charge your card for your subscription. Update your payment method to "
        "keep your plan.",
        {"invoice": invoice["id"], "subscription": subscription},
    )
    return Outcome.PROCESSED


def charge_refunded(context: EventContext) -> Outcome:
    """Take back the credits a refunded payment bought, in proportion to the amount refunded so
    far, never below a zero balance (the shortfall is kept on the payment)."""
    charge = context.obj
    payment = context.conn.execute(
        """
        select id, user_id, credits, amount, refunded_credits from stripe_payments
         where (payment_intent is not null and payment_intent = %(intent)s)
            or charge = %(charge)s or id = %(invoice)s
         order by created_at
         limit 1
           for update
        """,
        {
            "intent": object_id(charge.get("payment_intent")),
            "charge": charge["id"],
            "invoice": object_id(charge.get("invoice")),
        },
    ).fetchone()
    if payment is None:
        raise EventFailure(
            f"refund of charge {charge['id']}: no payment of it is recorded yet (its checkout or "
            "invoice event may not have arrived); retried later"
        )
    refunded = int(charge.get("amount_refunded") or 0)
    amount = int(payment["amount"])
    owed = (
        payment["credits"]
        if amount == 0 or refunded >= amount
        else (payment["credits"] * refunded // amount)
    )
    due = owed - int(payment["refunded_credits"])
    taken = 0
    if due > 0:
        row = context.conn.execute(
            "select taken from conveyor_take_back_credits(%s, %s, %s, %s)",
            (
                payment["user_id"],
                due,
                f"Refund of {payment['id']}",
                f"refund:{charge['id']}:{refunded}",
            ),
        ).fetchone()
        taken = int(row["taken"]) if row else 0
    context.conn.execute(
        """
        update stripe_payments
           set refunded_amount = greatest(refunded_amount, %(refunded)s),
               refunded_credits = greatest(refunded_credits, %(owed)s),
               refund_shortfall = refund_shortfall + %(shortfall)s,
               charge = coalesce(charge, %(charge)s)
         where id = %(id)s
        """,
        {
            "id": payment["id"],
            "refunded": refunded,
            "owed": owed,
            "shortfall": max(0, due - taken),
            "charge": charge["id"],
        },
    )
    if due > taken:
        log.warning("refund_shortfall", payment=payment["id"], credits_due=due, credits_taken=taken)
    return Outcome.PROCESSED


HANDLERS = {
    inbox.CHECKOUT_COMPLETED: checkout_completed,
    inbox.CHECKOUT_ASYNC_SUCCEEDED: checkout_completed,
    inbox.CHECKOUT_ASYNC_FAILED: checkout_async_failed,
    inbox.SUBSCRIPTION_CREATED: subscription_changed,
    inbox.SUBSCRIPTION_UPDATED: subscription_changed,
    inbox.SUBSCRIPTION_DELETED: subscription_changed,
    inbox.INVOICE_PAID: invoice_paid,
    inbox.INVOICE_PAYMENT_FAILED: invoice_payment_failed,
    inbox.CHARGE_REFUNDED: charge_refunded,
}
