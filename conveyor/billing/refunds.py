"""Refunds: a refunded charge takes back the credits of the purchase it paid for, in proportion
to what was refunded of that purchase, never below a zero balance.

A charge is linked to its purchase through the payments recorded with it
(`stripe_payment_parts`: the checkout's PaymentIntent, the invoice's charge and PaymentIntent or,
since API version 2025-03-31, its InvoicePayments). A charge of an invoice recorded without them
is linked by the charge's `invoice` (before basil) or by asking Stripe's API which invoice its
PaymentIntent paid (`GET /v1/invoice_payments?payment[payment_intent]=`).
"""

from __future__ import annotations

from typing import Any

import structlog

from conveyor.billing.event_context import (
    EventContext,
    EventFailure,
    Outcome,
    asking_stripe,
    link_payment,
)
from conveyor.billing.stripe_api import invoice_payments
from conveyor.billing.stripe_objects import PaymentRef, object_id

log = structlog.get_logger(__name__)


def charge_refunded(context: EventContext) -> Outcome:
    """Take back a purchase's credits in proportion to what was refunded of it so far (over all
    its payments), never below a zero balance (the shortfall is kept on the purchase)."""
    charge = context.obj
    charge_refunded_total = int(charge.get("amount_refunded") or 0)
    ref = PaymentRef(object_id(charge.get("payment_intent")), charge["id"])
    part = linked_part(context, ref) or link_to_invoice(context, charge, ref)
    # The purchase row is the lock: refunds of its several payments are applied one at a time.
    payment = context.conn.execute(
        "select id, user_id, credits, amount, refunded_credits from stripe_payments "
        "where id = %s for update",
        (part["payment_id"],),
    ).fetchone()
    if payment is None:  # its user was forgotten meanwhile
        raise EventFailure(f"refund of charge {charge['id']}: {part['payment_id']} is gone")
    context.conn.execute(
        "update stripe_payment_parts set refunded_amount = greatest(refunded_amount, %s) "
        "where id = %s",
        (charge_refunded_total, part["id"]),
    )
    total = context.conn.execute(
        "select coalesce(sum(refunded_amount), 0) as refunded from stripe_payment_parts "
        "where payment_id = %s",
        (payment["id"],),
    ).fetchone()
    refunded = int(total["refunded"]) if total else 0
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
                f"refund:{charge['id']}:{charge_refunded_total}",
            ),
        ).fetchone()
        taken = int(row["taken"]) if row else 0
    context.conn.execute(
        """
        update stripe_payments
           set refunded_amount = greatest(refunded_amount, %(refunded)s),
               refunded_credits = greatest(refunded_credits, %(owed)s),
               refund_shortfall = refund_shortfall + %(shortfall)s
         where id = %(id)s
        """,
        {
            "id": payment["id"],
            "refunded": refunded,
            "owed": owed,
            "shortfall": max(0, due - taken),
        },
    )
    if due > taken:
        log.warning("refund_shortfall", payment=payment["id"], credits_due=due, credits_taken=taken)
    return Outcome.PROCESSED


def linked_part(context: EventContext, ref: PaymentRef) -> dict[str, Any] | None:
    """The recorded payment this charge is, by its id or its PaymentIntent."""
    row: dict[str, Any] | None = context.conn.execute(
        """
        select id, payment_id from stripe_payment_parts
         where charge = %(charge)s or payment_intent = %(intent)s
         order by charge = %(charge)s desc nulls last, id
         limit 1
        """,
        {"charge": ref.charge, "intent": ref.payment_intent},
    ).fetchone()
    return row


def link_to_invoice(
    context: EventContext, charge: dict[str, Any], ref: PaymentRef
) -> dict[str, Any]:
    """Link a charge no recorded payment names to the invoice it paid: the charge's `invoice`
    (before basil), else the invoice Stripe's API lists for its PaymentIntent."""
    invoices = [object_id(charge.get("invoice"))]
    if invoices == [None] and ref.payment_intent and context.can_ask_stripe:
        with asking_stripe(f"finding the invoice of charge {charge['id']}"):
            listed = invoice_payments(context.settings, payment_intent=ref.payment_intent)
        invoices = [object_id(p.get("invoice")) for p in listed if p.get("status") == "paid"]
    recorded = context.conn.execute(
        "select id from stripe_payments where id = any(%s) order by created_at limit 1",
        ([invoice for invoice in invoices if invoice],),
    ).fetchone()
    if recorded is None:
        hint = (
            ""
            if context.can_ask_stripe or charge.get("invoice")
            else "; without STRIPE_SECRET_KEY the payments of an invoice (API version "
            "2025-03-31 and later) cannot be listed"
        )
        raise EventFailure(
            f"refund of charge {charge['id']}: no payment of it is recorded yet (its checkout or "
            f"invoice event may not have arrived){hint}; retried later"
        )
    link_payment(context.conn, recorded["id"], ref)
    part = linked_part(context, ref)  # just linked, here or by a concurrent event of the charge
    if part is None:
        raise EventFailure(
            f"refund of charge {charge['id']}: linking it to {recorded['id']} failed"
        )
    return part
