"""conveyor.billing.handlers against Postgres: once per event under concurrency, plan credits
paid once a month whether they come from the calendar or from invoices, refunds without Stripe's
API, and payments recorded before the payments of an invoice had rows of their own."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

from conveyor import billing
from conveyor.billing import inbox
from conveyor.db import Database, sql_connection
from conveyor.ledger import accounts
from conveyor.ops.migrations import migrate, sql_files
from conveyor.settings import Settings
from tests import stripe_fixtures
from tests.fake_stripe import credit_pack_session, event, subscription

SETTINGS = {"stripe_prices": {"price_basic": {"plan": "basic"}}}


def store(db: Database, document: dict[str, Any]) -> str:
    payload = json.dumps(document).encode()
    return inbox.store_event(db, inbox.parse_event(payload), payload).id


def test_one_event_processed_by_many_workers_at_once_is_applied_once(
    db: Database, settings: Settings
) -> None:
    user = uuid.uuid4()
    before = accounts.account(db, user).credit_balance
    event_id = store(db, event("checkout.session.completed", credit_pack_session(user)))

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(
            pool.map(lambda _: billing.process_event(db, settings, event_id).outcome, range(8))
        )

    assert set(outcomes) == {billing.Outcome.PROCESSED}
    assert accounts.account(db, user).credit_balance == before + 100


def test_an_unknown_event_id_is_reported_missing(db: Database, settings: Settings) -> None:
    assert billing.process_event(db, settings, "evt_never_stored").outcome is (
        billing.Outcome.MISSING
    )


def test_a_subscriber_gets_no_calendar_grant_because_invoices_pay_their_credits(
    db: Database, settings: Settings
) -> None:
    user = uuid.uuid4()
    accounts.account(db, user)
    billing.process_event(
        db,
        settings,
        store(db, event("customer.subscription.created", subscription(user, "sub_cal"))),
    )
    next_month = date(2099, 1, 1)

    with db.transaction() as conn:
        row = conn.execute(
            "select conveyor.conveyor_grant_period_credits(%s, %s) as granted", (user, next_month)
        ).fetchone()

    assert row is not None
    assert row["granted"] is False


def test_a_user_without_a_live_subscription_still_gets_the_calendar_grant(
    db: Database, settings: Settings
) -> None:
    user = uuid.uuid4()
    accounts.account(db, user)

    with db.transaction() as conn:
        row = conn.execute(
            "select conveyor.conveyor_grant_period_credits(%s, %s) as granted",
            (user, date(2099, 1, 1)),
        ).fetchone()

    assert row is not None
    assert row["granted"] is True


def owned_subscription(user: uuid.UUID, sub: str, customer: str, status: str) -> dict[str, Any]:
    """A Subscription object of user's, as Conveyor's checkout makes it."""
    metadata = {"conveyor_user_id": str(user), "conveyor_plan": "basic"}
    return stripe_fixtures.subscription(sub, customer, status=status, metadata=metadata)


def subscribe(db: Database, settings: Settings, user: uuid.UUID, sub: str, customer: str) -> None:
    """user's basic subscription recorded active, its customer mapped to them."""
    created = event(
        "customer.subscription.created", owned_subscription(user, sub, customer, "active")
    )
    assert billing.process_event(db, settings, store(db, created)).outcome is (
        billing.Outcome.PROCESSED
    )


def test_tied_subscription_events_processed_at_once_leave_the_user_paying(
    db: Database, settings: Settings
) -> None:
    user, sub, customer, second = uuid.uuid4(), "sub_tied", "cus_tied", int(time.time()) - 5
    tied = [
        store(db, event(kind, owned_subscription(user, sub, customer, status), created=second))
        for kind, status in (
            ("customer.subscription.created", "incomplete"),
            ("customer.subscription.updated", "active"),
        )
    ]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda event_id: billing.process_event(db, settings, event_id), tied * 4))

    assert accounts.account(db, user).plan_id == "basic"


def test_invoice_paid_and_payment_succeeded_processed_at_once_grant_the_credits_once(
    db: Database, settings: Settings
) -> None:
    user, customer = uuid.uuid4(), "cus_twins"
    subscribe(db, settings, user, "sub_twins", customer)
    before = accounts.account(db, user).credit_balance
    paid = stripe_fixtures.invoice("sub_twins", customer)
    twins = [store(db, event(kind, paid)) for kind in ("invoice.paid", "invoice.payment_succeeded")]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda event_id: billing.process_event(db, settings, event_id), twins * 4))

    assert accounts.account(db, user).credit_balance == before + 1000  # basic: 1,000 a month


def test_without_an_api_key_a_refund_of_an_invoice_naming_no_payment_fails_saying_why(
    db: Database, settings: Settings
) -> None:
    user, customer = uuid.uuid4(), "cus_no_key"
    subscribe(db, settings, user, "sub_no_key", customer)
    billing.process_event(
        db,
        settings,
        store(db, event("invoice.paid", stripe_fixtures.invoice("sub_no_key", customer))),
    )
    refunded = stripe_fixtures.charge("pi_unlisted", amount=2000, amount_refunded=2000)

    result = billing.process_event(db, settings, store(db, event("charge.refunded", refunded)))

    assert result.outcome is billing.Outcome.FAILED
    assert result.error is not None
    assert "without STRIPE_SECRET_KEY" in result.error


def test_a_payment_recorded_before_the_upgrade_keeps_its_refund_link(
    empty_database_url: str, tmp_path: Path
) -> None:
    earlier = tmp_path / "sql"
    earlier.mkdir()
    for migration in sql_files().iterdir():
        if migration.name.endswith(".sql") and migration.name < "20261207001400":
            (earlier / migration.name).write_bytes(migration.read_bytes())
    migrate(empty_database_url, earlier)
    with sql_connection(empty_database_url) as conn:
        conn.execute(
            "insert into stripe_payments (id, user_id, payment_intent, charge, credits, amount, "
            "refunded_amount) values ('in_legacy', %s, 'pi_legacy', 'ch_legacy', 1000, 2000, 500)",
            (uuid.uuid4(),),
        )
        conn.commit()

    migrate(empty_database_url)

    with sql_connection(empty_database_url) as conn:
        parts = conn.execute(
            "select payment_id, payment_intent, charge, refunded_amount from stripe_payment_parts"
        ).fetchall()
    assert parts == [("in_legacy", "pi_legacy", "ch_legacy", 500)]
