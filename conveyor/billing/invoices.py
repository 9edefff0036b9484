"""Subscription invoices: a paid one grants the plan's monthly credits once and records the
payments it was paid with (for refunds); a failed one marks the subscription past due."""

from __future__ import annotations

from typing import Any

import structlog

from conveyor.billing.event_context import (
    EventContext,
    EventFailure,
    Outcome,
    invoice_plan,
    payment_failed,
    record_payment,
    resolve_user,
)
from conveyor.billing.stripe_api import invoice_payments
from conveyor.billing.stripe_objects import (
    PaymentRef,
    invoice_payment_ref,
    invoice_payment_refs,
    invoice_subscription,
)
from conveyor.errors import ConveyorError

log = structlog.get_logger(__name__)


def invoice_paid(context: EventContext) -> Outcome:
    """invoice.paid and invoice.payment_succeeded: the plan's monthly credits, once per invoice
    whichever comes first (the other one, and any replay, is SKIPPED)."""
    invoice = context.obj
    if invoice.get("status", "paid") != "paid":
        # A partial payment (basil and later): invoice.paid follows once the invoice is paid.
        return Outcome.SKIPPED
    paid_with = payments_of(context, invoice)
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
            # Once per invoice: the reference is the natural key both event types share.
            context.conn.execute(
                "select * from add_credits(%s, %s, 'grant', %s, %s)",
                (user, grant, f"{row['name']} plan credits", f"invoice:{invoice['id']}"),
            )
            context.credited.add(user)
    recorded = record_payment(
        context,
        payment_id=invoice["id"],
        user=user,
        paid_with=paid_with,
        credits=grant,
        amount=int(invoice.get("amount_paid") or 0),
        currency=invoice.get("currency"),
    )
    return Outcome.PROCESSED if recorded else Outcome.SKIPPED


def payments_of(context: EventContext, invoice: dict[str, Any]) -> list[PaymentRef]:
    """The payments that paid an invoice: from the payload (before basil, or when `payments` is
    included), else listed by Stripe's API (`GET /v1/invoice_payments?invoice=`)."""
    named = invoice_payment_refs(invoice)
    # A free invoice (a trial's) was paid with nothing, so there is nothing to list either.
    if named or not context.can_ask_stripe or not invoice.get("amount_paid"):
        return named
    known = context.conn.execute(
        "select 1 from stripe_payment_parts where payment_id = %s limit 1", (invoice["id"],)
    ).fetchone()
    if known is not None:
        return []  # the twin event (invoice.paid / invoice.payment_succeeded) listed them
    try:
        listed = invoice_payments(context.settings, invoice=invoice["id"])
    except ConveyorError as exc:
        # The credits are owed whatever Stripe's API says now; a refund of this invoice finds
        # its payment through the API later (conveyor/billing/refunds.py).
        log.warning("stripe_invoice_payments_unread", invoice=invoice["id"], error=exc.message)
        return []
    return [ref for ref in map(invoice_payment_ref, listed) if ref is not None]


def invoice_payment_failed(context: EventContext) -> Outcome:
    """A failed renewal: a paying subscription is `past_due` (unless a later state says
    otherwise) and the user is told to update their payment method. A failed first invoice leaves
    an `incomplete` subscription incomplete, as Stripe does: past_due would give the plan to a
    user who never paid."""
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
               and status in ('active', 'trialing', 'past_due')
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
