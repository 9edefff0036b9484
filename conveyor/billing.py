"""Stripe events applied to plans and credits: each event once, in one transaction, in any order.

Once per event: the event row is locked and its status made final in the same transaction as the
change. Once per thing: credit grants are keyed by the checkout session or invoice id, refunds by
what was already taken back, subscription state by the time of the event it came from (an older
event is recorded as `skipped`, so state only moves forward).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
import structlog

from conveyor import stripe_events as inbox
from conveyor.db import Connection, Database
from conveyor.notifications import PAYMENT_FAILED, Notification, notify
from conveyor.settings import Settings

log = structlog.get_logger(__name__)

LIVE_SUBSCRIPTION = ("active", "trialing", "past_due")
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
class Processed:
    """The outcome of processing one event, and the notifications to publish after commit."""

    outcome: Outcome
    error: str | None = None
    notifications: list[Notification] = field(default_factory=list)
    event_type: str | None = None


@dataclass
class EventContext:
    """One event being applied, inside its transaction."""

    conn: Connection
    settings: Settings
    event_id: str
    created: datetime
    obj: dict[str, Any]
    notifications: list[Notification] = field(default_factory=list)


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
        "select * from public.add_credits(%s, %s, 'purchase', %s, %s)",
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
            "select name, monthly_credit_grant from public.plans where id = %s", (plan,)
        ).fetchone()
        if row is None:
            raise EventFailure(f"invoice {invoice['id']}: plan {plan!r} does not exist")
        grant = int(row["monthly_credit_grant"])
        if grant > 0:
            context.conn.execute(
                "select * from public.add_credits(%s, %s, 'grant', %s, %s)",
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
            update public.user_subscriptions
               set status = 'past_due', state_at = %(at)s, state_event_id = %(event)s,
                   updated_at = now()
             where stripe_subscription_id = %(id)s and state_at <= %(at)s
               and status not in ('canceled', 'incomplete_expired')
            """,
            {"id": subscription, "at": context.created, "event": context.event_id},
        )
        context.conn.execute("select public.conveyor_sync_plan(%s)", (user,))
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
        select id, user_id, credits, amount, refunded_credits from public.stripe_payments
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
            "select taken from public.conveyor_take_back_credits(%s, %s, %s, %s)",
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
        update public.stripe_payments
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
            "select user_id from public.user_accounts where stripe_customer_id = %s", (customer,)
        ).fetchone()
        if row is not None:
            return UUID(str(row["user_id"]))
    subscription = obj["id"] if str(obj.get("id", "")).startswith("sub_") else None
    subscription = subscription or object_id(obj.get("subscription"))
    if subscription:
        row = context.conn.execute(
            "select user_id from public.user_subscriptions where stripe_subscription_id = %s",
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
    conn.execute("select public.conveyor_ensure_account(%s)", (user,))
    row = conn.execute(
        "select user_id from public.user_accounts where stripe_customer_id = %s", (customer,)
    ).fetchone()
    if row is not None and UUID(str(row["user_id"])) != user:
        raise EventFailure(f"customer {customer} belongs to another user, not {user}")
    conn.execute(
        "update public.user_accounts set stripe_customer_id = %s, updated_at = now() "
        "where user_id = %s and stripe_customer_id is null",
        (customer, user),
    )


def apply_subscription_state(
    context: EventContext,
    *,
    subscription: str,
    user: UUID,
    customer: str | None,
    price: str | None,
    plan: str,
    status: str,
    period: tuple[datetime | None, datetime | None],
    cancel_at_period_end: bool,
) -> bool:
    """Store a subscription state from this event unless a later one is stored, then sync the
    user's plan. Returns whether the state was applied."""
    exists = context.conn.execute("select 1 from public.plans where id = %s", (plan,)).fetchone()
    if exists is None:
        raise EventFailure(f"subscription {subscription}: plan {plan!r} does not exist")
    row = context.conn.execute(
        "select public.conveyor_apply_subscription_state("
        "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) as applied",
        (
            subscription,
            user,
            customer,
            price,
            plan,
            status,
            period[0],
            period[1],
            cancel_at_period_end,
            context.created,
            context.event_id,
        ),
    ).fetchone()
    applied = bool(row and row["applied"])
    if applied:
        context.conn.execute("select public.conveyor_sync_plan(%s)", (user,))
    return applied


def record_payment(
    context: EventContext,
    *,
    payment_id: str,
    user: UUID,
    payment_intent: str | None,
    charge: str | None,
    credits: int,
    amount: int,
    currency: str | None,
) -> None:
    """Remember what a payment bought, once, for refunds."""
    context.conn.execute(
        """
        insert into public.stripe_payments
          (id, user_id, payment_intent, charge, credits, amount, currency)
        values (%s, %s, %s, %s, %s, %s, %s)
        on conflict do nothing
        """,
        (payment_id, user, payment_intent, charge, credits, amount, currency),
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
        "select plan_id from public.user_subscriptions where stripe_subscription_id = %s",
        (subscription,),
    ).fetchone()
    if row is None:
        raise EventFailure(
            f"invoice {invoice['id']}: its price is not in STRIPE_PRICES and subscription "
            f"{subscription} is not recorded yet; retried later"
        )
    return str(row["plan_id"])


def invoice_subscription(invoice: dict[str, Any]) -> str | None:
    """The subscription an invoice bills (older API: `subscription`; newer: under `parent`)."""
    direct = object_id(invoice.get("subscription"))
    if direct:
        return direct
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return object_id(details.get("subscription"))


def line_price(line: dict[str, Any]) -> str | None:
    """An invoice line's price id, in the older (`price`) or newer (`pricing`) shape."""
    price = object_id(line.get("price"))
    if price:
        return price
    details = (line.get("pricing") or {}).get("price_details") or {}
    return object_id(details.get("price"))


def subscription_price(subscription: dict[str, Any]) -> str | None:
    """The price of a subscription's first item."""
    items = (subscription.get("items") or {}).get("data") or []
    return object_id(items[0].get("price")) if items else None


def subscription_period(subscription: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The current period, top-level (older API) or on the first item (newer)."""
    items = (subscription.get("items") or {}).get("data") or []
    source = subscription if "current_period_start" in subscription else (items[0] if items else {})
    return timestamp(source.get("current_period_start")), timestamp(
        source.get("current_period_end")
    )


def object_id(value: Any) -> str | None:
    """An id from a field that holds either the id or the expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def parse_uuid(value: Any) -> UUID | None:
    """value as a UUID, or None."""
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


def timestamp(value: Any) -> datetime | None:
    """A Stripe Unix timestamp as an aware datetime."""
    return datetime.fromtimestamp(int(value), UTC) if value is not None else None
