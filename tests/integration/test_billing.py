"""conveyor.billing.handlers against Postgres: once per event under concurrency, and plan credits
paid once a month whether they come from the calendar or from invoices."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date

from conveyor import billing
from conveyor.billing import inbox
from conveyor.db import Database
from conveyor.ledger import accounts
from conveyor.settings import Settings
from tests.fake_stripe import credit_pack_session, event, subscription

SETTINGS = {"stripe_prices": {"price_basic": {"plan": "basic"}}}


def store(db: Database, document: dict) -> str:
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
