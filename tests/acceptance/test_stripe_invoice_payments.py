"""Subscription invoices as Stripe sends them on current API versions (basil and later: payments
are InvoicePayments, listed at `GET /v1/invoice_payments`) and before: the plan's credits are
granted once per invoice, whichever of `invoice.paid` and `invoice.payment_succeeded` comes, and
a refunded charge takes back its share of them (refunded amount / amount the invoice was paid)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from conveyor.db import Database
from tests.acceptance import stripe_deliveries
from tests.acceptance.stripe_deliveries import account, deliver_and_wait, ledger_rows
from tests.fake_stripe import FakeStripe
from tests.stripe_fixtures import (
    CURRENT_API,
    PRE_BASIL_API,
    charge,
    invoice,
    invoice_payment,
    new_id,
    pre_basil_invoice,
    subscription,
    versioned_event,
)
from tests.support import LiveServer

USES_FAKE_STRIPE = True  # STRIPE_SECRET_KEY set, Stripe's API at the fake server
SETTINGS = stripe_deliveries.SETTINGS
BASIC_CREDITS = 1000  # the basic plan's monthly grant


def subscribe(server: LiveServer, db: Database, user: uuid.UUID) -> tuple[str, str]:
    """A basic subscription of user's, as its checkout leaves it; returns (subscription,
    customer)."""
    sub, customer = new_id("sub"), new_id("cus")
    metadata = {"conveyor_user_id": str(user), "conveyor_plan": "basic"}
    created = subscription(sub, customer, metadata=metadata)
    assert (
        deliver_and_wait(server, db, versioned_event("customer.subscription.created", created))
        == "processed"
    )
    return sub, customer


def pay(server: LiveServer, db: Database, document: dict[str, Any]) -> None:
    assert deliver_and_wait(server, db, versioned_event("invoice.paid", document)) == "processed"


def refund(
    server: LiveServer, db: Database, refunded: dict[str, Any], api: str = CURRENT_API
) -> str:
    return deliver_and_wait(server, db, versioned_event("charge.refunded", refunded, api=api))


def plan_grants(db: Database, user: uuid.UUID) -> list[dict[str, Any]]:
    return [r for r in ledger_rows(db, user) if r["reference"].startswith("invoice:")]


@pytest.mark.usefixtures("worker")
def test_a_refunded_charge_of_a_basil_invoice_takes_back_its_share_of_the_invoices_credits(
    live_server: LiveServer, db: Database, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    sub, customer = subscribe(live_server, db, user_id)
    paid = invoice(sub, customer, amount=2000)
    intent = new_id("pi")
    fake_stripe.invoice_payments.append(invoice_payment(paid["id"], intent, 2000))
    pay(live_server, db, paid)
    before = account(db, user_id).credit_balance

    refunded = charge(intent, amount=2000, amount_refunded=500, customer=customer)
    assert refund(live_server, db, refunded) == "processed"

    assert account(db, user_id).credit_balance == before - BASIC_CREDITS * 500 // 2000
    assert fake_stripe.calls("/v1/invoice_payments")[0].params["invoice"] == paid["id"]


@pytest.mark.usefixtures("worker")
def test_a_basil_invoice_that_carries_its_payments_links_its_refunds_without_asking_stripe(
    live_server: LiveServer, db: Database, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    sub, customer = subscribe(live_server, db, user_id)
    intent, invoice_id = new_id("pi"), new_id("in")
    paid = invoice(
        sub, customer, invoice_id=invoice_id, payments=[invoice_payment(invoice_id, intent, 2000)]
    )
    pay(live_server, db, paid)
    before = account(db, user_id).credit_balance

    refund(live_server, db, charge(intent, amount=2000, amount_refunded=2000))

    assert account(db, user_id).credit_balance == before - BASIC_CREDITS
    assert fake_stripe.calls("/v1/invoice_payments") == []


@pytest.mark.usefixtures("worker")
def test_refunds_of_a_basil_invoice_paid_in_two_payments_take_back_in_proportion_to_both(
    live_server: LiveServer, db: Database, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    sub, customer = subscribe(live_server, db, user_id)
    paid = invoice(sub, customer, amount=2000)
    first, second = new_id("pi"), new_id("pi")
    fake_stripe.invoice_payments += [
        invoice_payment(paid["id"], first, 1200),
        invoice_payment(paid["id"], second, 800),
    ]
    pay(live_server, db, paid)
    before = account(db, user_id).credit_balance

    refund(live_server, db, charge(second, amount=800, amount_refunded=800))
    assert account(db, user_id).credit_balance == before - BASIC_CREDITS * 800 // 2000

    refund(live_server, db, charge(first, amount=1200, amount_refunded=1200))
    assert account(db, user_id).credit_balance == before - BASIC_CREDITS


@pytest.mark.usefixtures("worker")
def test_a_refund_of_a_basil_invoice_recorded_while_stripe_was_down_finds_it_through_stripe(
    live_server: LiveServer, db: Database, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    sub, customer = subscribe(live_server, db, user_id)
    paid = invoice(sub, customer, amount=2000)
    intent = new_id("pi")
    for _ in range(3):  # the first call and stripe-python's two retries
        fake_stripe.fail_next(500, "Stripe is having a bad day", error_type="api_error")
    pay(live_server, db, paid)  # the credits are granted all the same
    fake_stripe.invoice_payments.append(invoice_payment(paid["id"], intent, 2000))
    before = account(db, user_id).credit_balance

    refunded = charge(intent, amount=2000, amount_refunded=1000)
    assert refund(live_server, db, refunded) == "processed"

    assert account(db, user_id).credit_balance == before - BASIC_CREDITS // 2
    [lookup] = [c for c in fake_stripe.calls("/v1/invoice_payments") if "payment" in c.params]
    assert lookup.params["payment"] == {"type": "payment_intent", "payment_intent": intent}


@pytest.mark.usefixtures("worker")
def test_a_refunded_charge_of_a_pre_basil_invoice_takes_back_its_share_of_the_invoices_credits(
    live_server: LiveServer, db: Database, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    sub, customer = subscribe(live_server, db, user_id)
    charge_id, intent = new_id("ch"), new_id("pi")
    paid = pre_basil_invoice(sub, customer, charge=charge_id, payment_intent=intent, amount=2000)
    deliver_and_wait(live_server, db, versioned_event("invoice.paid", paid, api=PRE_BASIL_API))
    before = account(db, user_id).credit_balance

    refunded = charge(
        intent, amount=2000, amount_refunded=1000, charge_id=charge_id, invoice=paid["id"]
    )
    assert refund(live_server, db, refunded, api=PRE_BASIL_API) == "processed"

    assert account(db, user_id).credit_balance == before - BASIC_CREDITS // 2
    assert fake_stripe.calls("/v1/invoice_payments") == []


@pytest.mark.usefixtures("worker")
def test_a_refund_event_repeating_a_refunded_total_already_applied_takes_back_nothing_more(
    live_server: LiveServer, db: Database, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    sub, customer = subscribe(live_server, db, user_id)
    paid = invoice(sub, customer, amount=2000)
    intent = new_id("pi")
    fake_stripe.invoice_payments.append(invoice_payment(paid["id"], intent, 2000))
    pay(live_server, db, paid)
    refunded = charge(intent, amount=2000, amount_refunded=500)
    refund(live_server, db, refunded)
    after_first = account(db, user_id).credit_balance

    # Each charge.refunded carries the charge's running total; another event with a total
    # already applied (or an admin replay of this one) owes nothing more.
    assert refund(live_server, db, refunded) == "processed"

    assert account(db, user_id).credit_balance == after_first


@pytest.mark.usefixtures("worker")
def test_invoice_paid_and_invoice_payment_succeeded_of_one_invoice_grant_its_credits_once(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    sub, customer = subscribe(live_server, db, user_id)
    invoice_id = new_id("in")
    paid = invoice(
        sub, customer, invoice_id=invoice_id, payments=[invoice_payment(invoice_id, "pi_1", 2000)]
    )
    before = account(db, user_id).credit_balance

    succeeded = versioned_event("invoice.payment_succeeded", paid)
    assert deliver_and_wait(live_server, db, succeeded) == "processed"
    assert deliver_and_wait(live_server, db, versioned_event("invoice.paid", paid)) == "skipped"

    assert account(db, user_id).credit_balance == before + BASIC_CREDITS
    assert len(plan_grants(db, user_id)) == 1


@pytest.mark.usefixtures("worker")
def test_a_partly_paid_invoice_grants_nothing_until_it_is_paid(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    sub, customer = subscribe(live_server, db, user_id)
    invoice_id = new_id("in")
    open_invoice = invoice(sub, customer, invoice_id=invoice_id, status="open")
    before = account(db, user_id).credit_balance

    partial = versioned_event("invoice.payment_succeeded", open_invoice)
    assert deliver_and_wait(live_server, db, partial) == "skipped"
    assert account(db, user_id).credit_balance == before

    pay(live_server, db, invoice(sub, customer, invoice_id=invoice_id))
    assert account(db, user_id).credit_balance == before + BASIC_CREDITS
