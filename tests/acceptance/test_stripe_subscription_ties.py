"""Subscription events that carry the same `created` second, without a Stripe API key: the tie is
decided by the subscriptions' statuses, never by which delivery came last, so a paying user is
never sent back to `free` by the older state of their own subscription."""

from __future__ import annotations

import time
import uuid

import pytest

from conveyor.db import Database
from tests.acceptance import stripe_deliveries
from tests.acceptance.stripe_deliveries import account, deliver_and_wait, subscription_row
from tests.stripe_fixtures import (
    new_id,
    subscription_event,
)
from tests.support import LiveServer

SETTINGS = stripe_deliveries.SETTINGS  # no STRIPE_SECRET_KEY: Stripe's API cannot be asked


@pytest.mark.usefixtures("worker")
def test_a_tied_incomplete_created_arriving_after_the_active_update_keeps_the_user_paying(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    sub, customer, second = new_id("sub"), new_id("cus"), int(time.time()) - 5
    updated = subscription_event(
        "customer.subscription.updated", sub, customer, user_id, "active", second
    )
    created = subscription_event(
        "customer.subscription.created", sub, customer, user_id, "incomplete", second
    )

    assert deliver_and_wait(live_server, db, updated) == "processed"
    assert deliver_and_wait(live_server, db, created) == "skipped"

    row = subscription_row(db, sub)
    assert row is not None
    assert row["status"] == "active"
    assert account(db, user_id).plan_id == "basic"


@pytest.mark.usefixtures("worker")
def test_an_active_update_tied_with_an_incomplete_created_event_before_it_makes_the_user_paying(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    sub, customer, second = new_id("sub"), new_id("cus"), int(time.time()) - 5
    created = subscription_event(
        "customer.subscription.created", sub, customer, user_id, "incomplete", second
    )
    updated = subscription_event(
        "customer.subscription.updated", sub, customer, user_id, "active", second
    )

    deliver_and_wait(live_server, db, created)
    assert deliver_and_wait(live_server, db, updated) == "processed"

    assert account(db, user_id).plan_id == "basic"


@pytest.mark.usefixtures("worker")
def test_a_tied_deletion_ends_the_subscription_even_when_an_update_arrives_after_it(
    live_server: LiveServer, db: Database, user_id: uuid.UUID
) -> None:
    sub, customer, second = new_id("sub"), new_id("cus"), int(time.time()) - 5
    deleted = subscription_event(
        "customer.subscription.deleted", sub, customer, user_id, "canceled", second
    )
    updated = subscription_event(
        "customer.subscription.updated", sub, customer, user_id, "active", second
    )

    deliver_and_wait(live_server, db, deleted)
    assert deliver_and_wait(live_server, db, updated) == "skipped"

    row = subscription_row(db, sub)
    assert row is not None
    assert row["status"] == "canceled"
    assert account(db, user_id).plan_id == "free"
