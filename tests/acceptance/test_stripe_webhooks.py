"""POST /api/payments/webhook: deliveries signed as Stripe signs them, sent over HTTP to the running
app, stored once and applied once by a real worker, in any order."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from conveyor import accounts
from conveyor.db import Database
from conveyor.services import free_port
from tests.fake_stripe import credit_pack_session, event, invoice, sign, subscription
from tests.support import LiveServer, make_settings

SECRET = "whsec_current_secret_for_tests"
OLD_SECRET = "whsec_previous_secret_for_tests"
SETTINGS = {
    "stripe_webhook_secret": f"{SECRET},{OLD_SECRET}",
    "stripe_prices": {
        "price_basic": {"plan": "basic"},
        "price_premium": {"plan": "premium"},
        "price_pack_100": {"credits": 100},
    },
    "stripe_reconcile_from_api": False,
}
WEBHOOK = "/api/payments/webhook"
FINAL_OR_FAILED = ("processed", "skipped", "ignored", "failed")


def deliver(
    server: LiveServer,
    document: dict[str, Any],
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    body: bytes | None = None,
) -> requests.Response:
    """POST one delivery the way Stripe does."""
    payload = json.dumps(document).encode() if body is None else body
    return requests.post(
        server.url + WEBHOOK,
        data=payload,
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": sign(payload, secret, timestamp=timestamp),
        },
        timeout=10,
    )


def stored(db: Database, event_id: str) -> dict[str, Any] | None:
    with db.transaction() as conn:
        row: dict[str, Any] | None = conn.execute(
            "select status, attempts, last_error from stripe_events where id = %s", (event_id,)
        ).fetchone()
    return row


def wait_processed(
    db: Database,
    event_id: str,
    *,
    until: tuple[str, ...] = FINAL_OR_FAILED,
    timeout: float = 15,
) -> dict[str, Any]:
    """Wait until the worker made the event final or failed it (or reached a status in until)."""
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = stored(db, event_id)
        if row is not None and row["status"] in until:
            return row
        time.sleep(0.05)
    raise AssertionError(f"event {event_id} not processed in {timeout} s: {row}")


def deliver_and_wait(server: LiveServer, db: Database, document: dict[str, Any]) -> str:
    response = deliver(server, document)
    assert response.status_code == 200, response.text
    return str(wait_processed(db, document["id"])["status"])


def account(db: Database, user: uuid.UUID) -> accounts.Account:
    return accounts.account(db, user)


def ledger_rows(db: Database, user: uuid.UUID) -> list[dict[str, Any]]:
    with db.transaction() as conn:
        return conn.execute(
            "select amount, kind, reference from credit_transactions where user_id = %s "
            "order by id",
            (user,),
        ).fetchall()


def subscription_row(db: Database, subscription: str) -> dict[str, Any] | None:
    with db.transaction() as conn:
        row: dict[str, Any] | None = conn.execute(
            "select user_id, plan_id, status, cancel_at_period_end, current_period_end "
            "from user_subscriptions where stripe_subscription_id = %s",
            (subscription,),
        ).fetchone()
    return row


# --- signatures ---------------------------------------------------------------------------


@pytest.fixture
def document() -> dict[str, Any]:
    return event("customer.created", {"id": "cus_x", "object": "customer"})


def test_a_validly_signed_event_is_stored_and_answered_200(
    live_server: LiveServer, db: Database, document: dict[str, Any]
) -> None:
    response = deliver(live_server, document)

    assert response.status_code == 200
    assert response.json()["received"] is True
    assert stored(db, document["id"]) is not None


def test_a_tampered_body_is_refused_and_not_stored(
    live_server: LiveServer, db: Database, document: dict[str, Any]
) -> None:
    payload = json.dumps(document).encode()
    tampered = payload.replace(b"cus_x", b"cus_y")
    response = requests.post(
        live_server.url + WEBHOOK,
        data=tampered,
        headers={"Stripe-Signature": sign(payload, SECRET)},
        timeout=10,
    )

    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_SIGNATURE"
    assert stored(db, document["id"]) is None


def test_a_stale_timestamp_is_refused(
    live_server: LiveServer, db: Database, document: dict[str, Any]
) -> None:
    response = deliver(live_server, document, timestamp=int(time.time()) - 301)

    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_SIGNATURE"
    assert "300 s" in response.json()["error"]
    assert stored(db, document["id"]) is None


def test_a_signature_made_with_another_secret_is_refused(
    live_server: LiveServer, document: dict[str, Any]
) -> None:
    response = deliver(live_server, document, secret="whsec_not_ours")

    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_SIGNATURE"


def test_the_previous_secret_is_accepted_while_rotating(
    live_server: LiveServer, db: Database, document: dict[str, Any]
) -> None:
    response = deliver(live_server, document, secret=OLD_SECRET)

    assert response.status_code == 200
    assert stored(db, document["id"]) is not None


def test_a_delivery_without_the_signature_header_is_refused(
    live_server: LiveServer, document: dict[str, Any]
) -> None:
    response = requests.post(live_server.url + WEBHOOK, json=document, timeout=10)

    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_SIGNATURE"
    assert "missing" in response.json()["error"]


def test_a_signed_body_that_is_not_json_is_a_400(live_server: LiveServer) -> None:
    response = deliver(live_server, {}, body=b"not json at all")

    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_JSON"


def test_a_signed_json_body_that_is_not_an_event_is_a_400(live_server: LiveServer) -> None:
    response = deliver(live_server, {"id": "evt_1", "type": "x"})

    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_INPUT"


def test_an_event_type_we_do_not_handle_is_stored_as_ignored(
    live_server: LiveServer, db: Database, document: dict[str, Any]
) -> None:
    response = deliver(live_server, document)

    assert response.json()["queued"] is False
    row = stored(db, document["id"])
    assert row is not None
    assert row["status"] == "ignored"


def test_a_repeated_delivery_is_answered_200_and_stored_once(
    live_server: LiveServer, db: Database, document: dict[str, Any]
) -> None:
    answers = [deliver(live_server, document).json() for _ in range(3)]

    assert [a["duplicate"] for a in answers] == [False, True, True]
    with db.transaction() as conn:
        count = conn.execute(
            "select count(*) as n from stripe_events where id = %s", (document["id"],)
        ).fetchone()
    assert count is not None
    assert count["n"] == 1


# --- processing by a real worker ------------------------------------------------------------


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


def test_a_delivery_while_redis_is_down_is_stored_and_answered_200(
    database_url: str, tmp_path: Path, user_id: uuid.UUID
) -> None:
    """Stripe need not retry: the reconciler processes what was stored but not queued."""
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(database_url, dead_redis, tmp_path / "data", **SETTINGS)
    document = event("customer.subscription.created", subscription(user_id, "sub_no_redis"))
    with LiveServer(settings) as server:
        started = time.monotonic()
        response = deliver(server, document)
        answered_in = time.monotonic() - started
        db = server.app.extensions["conveyor.db"]

        assert response.status_code == 200, response.text
        assert response.json()["queued"] is False
        assert answered_in < 5
        row = stored(db, document["id"])
    assert row is not None
    assert row["status"] == "received"
