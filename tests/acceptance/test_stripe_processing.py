"""Stripe events applied once by a real worker, in any order: credit packs, delayed payments,
subscriptions, invoices, refunds, and events for users we do not know."""

from __future__ import annotations

import time
import uuid

import pytest

from conveyor.db import Database
from tests.acceptance import stripe_deliveries
from tests.acceptance.stripe_deliveries import (
    account,
    deliver,
    deliver_and_wait,
    ledger_rows,
    stored,
    subscription_row,
    wait_processed,
)
from tests.fake_stripe import credit_pack_session, event, invoice, subscription
from tests.support import LiveServer

SETTINGS = stripe_deliveries.SETTINGS  # the prices and secrets the deliveries are made for


@pytest.mark.usefixtures("worker")
def test_a_paid_credit_pack_checkout_grants_its_credits_once_over_five_deliveries(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    before = account(db, user_id).credit_balance
    session = credit_pack_session(user_id, credits=300)
    document = event("checkout.session.completed", session)

    for _ in range(5):
        assert deliver(live_server, document).status_code == 200
    assert wait_processed(db, document["id"])["status"] == "processed"

    assert account(db, user_id).credit_balance == before + 300
    purchases = [r for r in ledger_rows(db, user_id) if r["kind"] == "purchase"]
    assert purchases == [{"amount": 300, "kind": "purchase", "reference": session["id"]}]


@pytest.mark.usefixtures("worker")
def test_a_delayed_payment_grants_credits_only_when_it_succeeds(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    before = account(db, user_id).credit_balance
    session = credit_pack_session(user_id, paid=False)

    deliver_and_wait(live_server, db, event("checkout.session.completed", session))
    assert account(db, user_id).credit_balance == before

    succeeded = {**session, "payment_status": "paid"}
    deliver_and_wait(live_server, db, event("checkout.session.async_payment_succeeded", succeeded))
    assert account(db, user_id).credit_balance == before + 100


@pytest.mark.usefixtures("worker")
def test_a_failed_delayed_payment_notifies_the_user_and_grants_nothing(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    before = account(db, user_id).credit_balance
    session = credit_pack_session(user_id, paid=False)

    deliver_and_wait(live_server, db, event("checkout.session.async_payment_failed", session))

    assert account(db, user_id).credit_balance == before
    with db.transaction() as conn:
        notes = conn.execute(
            "select notification_type, severity from notifications where user_id = %s",
            (user_id,),
        ).fetchall()
    assert notes == [{"notification_type": "payment_failed", "severity": "error"}]


@pytest.mark.usefixtures("worker")
def test_a_subscription_checkout_records_the_subscription_active_with_its_plan(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    session = {
        "id": f"cs_test_{uuid.uuid4().hex}",
        "object": "checkout.session",
        "mode": "subscription",
        "client_reference_id": str(user_id),
        "customer": "cus_checkout_sub",
        "subscription": "sub_from_checkout",
        "payment_status": "paid",
        "metadata": {"conveyor_price_id": "price_premium", "conveyor_plan": "premium"},
    }

    assert deliver_and_wait(live_server, db, event("checkout.session.completed", session)) == (
        "processed"
    )

    row = subscription_row(db, "sub_from_checkout")
    assert row is not None
    assert (row["plan_id"], row["status"]) == ("premium", "active")
    assert account(db, user_id).plan_id == "premium"


@pytest.mark.usefixtures("worker")
def test_subscription_created_updated_deleted_move_the_users_plan(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    now = int(time.time())
    sub = "sub_lifecycle"
    deliver_and_wait(
        live_server,
        db,
        event("customer.subscription.created", subscription(user_id, sub), created=now - 30),
    )
    assert account(db, user_id).plan_id == "basic"

    upgraded = subscription(user_id, sub, price="price_premium", cancel_at_period_end=True)
    deliver_and_wait(
        live_server, db, event("customer.subscription.updated", upgraded, created=now - 20)
    )
    row = subscription_row(db, sub)
    assert row is not None
    assert (row["plan_id"], row["cancel_at_period_end"]) == ("premium", True)
    assert account(db, user_id).plan_id == "premium"

    ended = subscription(user_id, sub, price="price_premium", status="canceled")
    deliver_and_wait(
        live_server, db, event("customer.subscription.deleted", ended, created=now - 10)
    )
    assert account(db, user_id).plan_id == "free"


@pytest.mark.usefixtures("worker")
def test_updated_delivered_before_created_ends_in_the_updated_state(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    now = int(time.time())
    sub = "sub_out_of_order"
    created = event("customer.subscription.created", subscription(user_id, sub), created=now - 20)
    updated = event(
        "customer.subscription.updated",
        subscription(user_id, sub, price="price_premium"),
        created=now - 10,
    )

    assert deliver_and_wait(live_server, db, updated) == "processed"
    assert deliver_and_wait(live_server, db, created) == "skipped"

    row = subscription_row(db, sub)
    assert row is not None
    assert row["plan_id"] == "premium"
    assert account(db, user_id).plan_id == "premium"


@pytest.mark.usefixtures("worker")
def test_an_old_update_after_a_newer_one_is_recorded_and_skipped(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    now = int(time.time())
    sub = "sub_stale_update"
    newer = event(
        "customer.subscription.updated",
        subscription(user_id, sub, status="past_due"),
        created=now - 5,
    )
    older = event(
        "customer.subscription.updated",
        subscription(user_id, sub, status="active", price="price_premium"),
        created=now - 60,
    )

    deliver_and_wait(live_server, db, newer)
    assert deliver_and_wait(live_server, db, older) == "skipped"

    row = subscription_row(db, sub)
    assert row is not None
    assert (row["status"], row["plan_id"]) == ("past_due", "basic")


@pytest.mark.usefixtures("worker")
def test_a_paid_invoice_grants_the_plans_monthly_credits_once(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    sub = "sub_invoiced"
    deliver_and_wait(
        live_server,
        db,
        event("customer.subscription.created", subscription(user_id, sub, customer="cus_inv")),
    )
    before = account(db, user_id).credit_balance
    paid = event("invoice.paid", invoice(sub, "cus_inv", price="price_basic"))

    for _ in range(5):
        assert deliver(live_server, paid).status_code == 200
    assert wait_processed(db, paid["id"])["status"] == "processed"

    assert account(db, user_id).credit_balance == before + 1000  # basic: 1,000 a month
    grants = [r for r in ledger_rows(db, user_id) if r["reference"].startswith("invoice:")]
    assert len(grants) == 1


@pytest.mark.usefixtures("worker")
def test_a_failed_invoice_marks_the_subscription_past_due_and_notifies(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    sub = "sub_failing"
    now = int(time.time())
    deliver_and_wait(
        live_server,
        db,
        event(
            "customer.subscription.created",
            subscription(user_id, sub, customer="cus_fail"),
            created=now - 10,
        ),
    )

    deliver_and_wait(live_server, db, event("invoice.payment_failed", invoice(sub, "cus_fail")))

    row = subscription_row(db, sub)
    assert row is not None
    assert row["status"] == "past_due"
    with db.transaction() as conn:
        notes = conn.execute(
            "select notification_type from notifications where user_id = %s", (user_id,)
        ).fetchall()
    assert notes == [{"notification_type": "payment_failed"}]


@pytest.mark.usefixtures("worker")
def test_a_failed_first_invoice_leaves_an_incomplete_subscription_without_the_plan(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    sub = "sub_never_paid"
    created = subscription(user_id, sub, status="incomplete", customer="cus_never_paid")
    deliver_and_wait(
        live_server,
        db,
        event("customer.subscription.created", created, created=int(time.time()) - 10),
    )

    failed = invoice(sub, "cus_never_paid")
    deliver_and_wait(live_server, db, event("invoice.payment_failed", failed))

    row = subscription_row(db, sub)
    assert row is not None
    assert row["status"] == "incomplete"
    assert account(db, user_id).plan_id == "free"


@pytest.mark.usefixtures("worker")
def test_a_refund_takes_back_the_credits_it_paid_for_in_proportion(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    session = credit_pack_session(user_id, credits=300)
    deliver_and_wait(live_server, db, event("checkout.session.completed", session))
    before = account(db, user_id).credit_balance
    charge = {
        "id": f"ch_{uuid.uuid4().hex[:14]}",
        "object": "charge",
        "payment_intent": session["payment_intent"],
        "amount": 1000,
        "amount_refunded": 500,
        "refunded": False,
    }

    deliver_and_wait(live_server, db, event("charge.refunded", charge))
    assert account(db, user_id).credit_balance == before - 150

    # The same refund again, then a second (cumulative) refund to the full amount.
    deliver_and_wait(live_server, db, event("charge.refunded", charge))
    full = {**charge, "amount_refunded": 1000, "refunded": True}
    deliver_and_wait(live_server, db, event("charge.refunded", full))
    assert account(db, user_id).credit_balance == before - 300


@pytest.mark.usefixtures("worker")
def test_a_refund_never_takes_the_balance_below_zero_and_records_the_shortfall(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    session = credit_pack_session(user_id, credits=300)
    deliver_and_wait(live_server, db, event("checkout.session.completed", session))
    spendable = account(db, user_id).credit_balance
    with db.transaction() as conn:
        conn.execute(
            "select * from deduct_credits(%s, %s, 'usage', 'spent', null)",
            (user_id, spendable - 50),
        )
    charge = {
        "id": f"ch_{uuid.uuid4().hex[:14]}",
        "object": "charge",
        "payment_intent": session["payment_intent"],
        "amount": 1000,
        "amount_refunded": 1000,
    }

    assert deliver_and_wait(live_server, db, event("charge.refunded", charge)) == "processed"

    assert account(db, user_id).credit_balance == 0
    with db.transaction() as conn:
        payment = conn.execute(
            "select refunded_credits, refund_shortfall from stripe_payments where id = %s",
            (session["id"],),
        ).fetchone()
    assert payment == {"refunded_credits": 300, "refund_shortfall": 250}


@pytest.mark.usefixtures("worker")
def test_an_event_for_an_unknown_user_fails_with_the_reason_and_is_kept(
    live_server: LiveServer, db: Database
) -> None:
    orphan = event(
        "customer.subscription.created", subscription(None, "sub_orphan", customer="cus_nobody")
    )

    assert deliver_and_wait(live_server, db, orphan) == "failed"

    row = stored(db, orphan["id"])
    assert row is not None
    assert "unknown user" in row["last_error"]
    assert "cus_nobody" in row["last_error"]
    assert subscription_row(db, "sub_orphan") is None
