"""Subscription events whose order cannot be known from their time, with a Stripe API key: the
subscription is read again from Stripe (`GET /v1/subscriptions/<id>`) and what Stripe says now
is stored; events that are newer, or that agree with what is stored, need no read."""

from __future__ import annotations

import time
import uuid

import pytest

from conveyor.db import Database
from tests.acceptance import stripe_deliveries
from tests.acceptance.stripe_deliveries import (
    account,
    deliver_and_wait,
    stored,
    subscription_row,
)
from tests.fake_stripe import FakeStripe
from tests.stripe_fixtures import (
    conveyor_metadata,
    new_id,
    subscription,
    subscription_event,
)
from tests.support import LiveServer

USES_FAKE_STRIPE = True  # STRIPE_SECRET_KEY set, Stripe's API at the fake server
SETTINGS = stripe_deliveries.SETTINGS


def reads_of(fake_stripe: FakeStripe, sub: str) -> int:
    return len(fake_stripe.calls(f"/v1/subscriptions/{sub}"))


@pytest.mark.usefixtures("worker")
def test_a_tied_event_that_disagrees_is_settled_by_what_stripe_says_now(
    live_server: LiveServer, db: Database, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    sub, customer, second = new_id("sub"), new_id("cus"), int(time.time()) - 5
    fake_stripe.subscriptions[sub] = subscription(
        sub, customer, status="active", metadata=conveyor_metadata(user_id)
    )
    updated = subscription_event(
        "customer.subscription.updated", sub, customer, user_id, "active", second
    )
    created = subscription_event(
        "customer.subscription.created", sub, customer, user_id, "incomplete", second
    )

    deliver_and_wait(live_server, db, updated)
    assert deliver_and_wait(live_server, db, created) == "processed"

    assert reads_of(fake_stripe, sub) == 1
    row = subscription_row(db, sub)
    assert row is not None
    assert row["status"] == "active"
    assert account(db, user_id).plan_id == "basic"


@pytest.mark.usefixtures("worker")
def test_stripes_answer_is_stored_even_when_neither_tied_event_carries_it(
    live_server: LiveServer, db: Database, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    sub, customer, second = new_id("sub"), new_id("cus"), int(time.time()) - 5
    fake_stripe.subscriptions[sub] = subscription(
        sub, customer, status="canceled", metadata=conveyor_metadata(user_id)
    )
    deliver_and_wait(
        live_server,
        db,
        subscription_event(
            "customer.subscription.updated", sub, customer, user_id, "active", second
        ),
    )

    deliver_and_wait(
        live_server,
        db,
        subscription_event(
            "customer.subscription.created", sub, customer, user_id, "incomplete", second
        ),
    )

    row = subscription_row(db, sub)
    assert row is not None
    assert row["status"] == "canceled"
    assert account(db, user_id).plan_id == "free"


@pytest.mark.usefixtures("worker")
def test_an_older_event_that_disagrees_is_settled_by_what_stripe_says_now(
    live_server: LiveServer, db: Database, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    # The card was fixed after the renewal failed; that `updated` has not arrived yet.
    sub, customer, now = new_id("sub"), new_id("cus"), int(time.time())
    fake_stripe.subscriptions[sub] = subscription(
        sub, customer, status="active", metadata=conveyor_metadata(user_id)
    )
    deliver_and_wait(
        live_server,
        db,
        subscription_event(
            "customer.subscription.updated", sub, customer, user_id, "past_due", now - 10
        ),
    )

    older = subscription_event(
        "customer.subscription.updated", sub, customer, user_id, "active", now - 60
    )
    assert deliver_and_wait(live_server, db, older) == "processed"

    row = subscription_row(db, sub)
    assert row is not None
    assert row["status"] == "active"


@pytest.mark.usefixtures("worker")
def test_an_older_event_that_agrees_with_the_stored_state_is_skipped_without_asking_stripe(
    live_server: LiveServer, db: Database, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    sub, customer, now = new_id("sub"), new_id("cus"), int(time.time())
    deliver_and_wait(
        live_server,
        db,
        subscription_event(
            "customer.subscription.updated", sub, customer, user_id, "active", now - 10
        ),
    )

    older = subscription_event(
        "customer.subscription.created", sub, customer, user_id, "active", now - 60
    )
    assert deliver_and_wait(live_server, db, older) == "skipped"

    assert reads_of(fake_stripe, sub) == 0


@pytest.mark.usefixtures("worker")
def test_a_newer_event_is_applied_without_asking_stripe(
    live_server: LiveServer, db: Database, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    sub, customer, now = new_id("sub"), new_id("cus"), int(time.time())
    deliver_and_wait(
        live_server,
        db,
        subscription_event(
            "customer.subscription.created", sub, customer, user_id, "incomplete", now - 20
        ),
    )

    newer = subscription_event(
        "customer.subscription.updated", sub, customer, user_id, "active", now - 10
    )
    assert deliver_and_wait(live_server, db, newer) == "processed"

    assert reads_of(fake_stripe, sub) == 0
    assert account(db, user_id).plan_id == "basic"


@pytest.mark.usefixtures("worker")
def test_a_tied_event_fails_for_a_retry_and_changes_nothing_while_stripe_is_unreachable(
    live_server: LiveServer, db: Database, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    sub, customer, second = new_id("sub"), new_id("cus"), int(time.time()) - 5
    deliver_and_wait(
        live_server,
        db,
        subscription_event(
            "customer.subscription.updated", sub, customer, user_id, "active", second
        ),
    )
    for _ in range(3):  # the first call and stripe-python's two retries
        fake_stripe.fail_next(500, "Stripe is having a bad day", error_type="api_error")

    tied = subscription_event(
        "customer.subscription.created", sub, customer, user_id, "incomplete", second
    )
    assert deliver_and_wait(live_server, db, tied) == "failed"

    failure = stored(db, tied["id"])
    assert failure is not None
    assert f"reading subscription {sub} from Stripe" in failure["last_error"]
    assert account(db, user_id).plan_id == "basic"
