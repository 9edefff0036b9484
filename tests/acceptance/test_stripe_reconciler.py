"""The Stripe reconciler and the admin view of the webhook inbox: nothing Stripe sent is dropped."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from celery import Celery

from conveyor.billing import inbox
from conveyor.billing.reconcile import reconcile
from conveyor.constants import TASK_RECONCILE_STRIPE_EVENTS
from conveyor.db import Database
from conveyor.settings import Settings
from tests.acceptance.stripe_deliveries import SETTINGS as WEBHOOK_SETTINGS
from tests.acceptance.stripe_deliveries import deliver_and_wait, wait_processed
from tests.fake_stripe import FakeStripe, event, subscription
from tests.support import ApiClient, LiveServer

USES_FAKE_STRIPE = True
SETTINGS = {**WEBHOOK_SETTINGS, "stripe_reconcile_from_api": True}


def store_without_queueing(db: Database, document: dict[str, Any]) -> None:
    """An event stored by the webhook whose queue message was then lost."""
    payload = json.dumps(document).encode()
    inbox.store_event(db, inbox.parse_event(payload), payload)
    with db.transaction() as conn:
        conn.execute(
            "update stripe_events set received_at = now() - interval '10 minutes' where id = %s",
            (document["id"],),
        )


def backoff_over(db: Database, event_id: str) -> None:
    with db.transaction() as conn:
        conn.execute("update stripe_events set next_attempt_at = now() where id = %s", (event_id,))


def run_reconciler(celery_app: Celery) -> None:
    celery_app.send_task(TASK_RECONCILE_STRIPE_EVENTS)


def plan_of(db: Database, user: uuid.UUID) -> str | None:
    with db.transaction() as conn:
        row = conn.execute("select plan_id from user_accounts where user_id = %s", (user,))
        found = row.fetchone()
    return None if found is None else str(found["plan_id"])


@pytest.mark.usefixtures("worker")
def test_a_failed_event_is_retried_by_the_reconciler_once_its_cause_is_fixed(
    live_server: LiveServer, db: Database, celery_app: Celery, user_id: uuid.UUID
) -> None:
    orphan = event(
        "customer.subscription.created", subscription(None, "sub_later", customer="cus_later")
    )
    assert deliver_and_wait(live_server, db, orphan) == "failed"
    with db.transaction() as conn:
        conn.execute("select conveyor_ensure_account(%s)", (user_id,))
        conn.execute(
            "update user_accounts set stripe_customer_id = 'cus_later' where user_id = %s",
            (user_id,),
        )
    backoff_over(db, orphan["id"])

    run_reconciler(celery_app)

    wait_processed(db, orphan["id"], until=("processed",))
    assert plan_of(db, user_id) == "basic"


@pytest.mark.usefixtures("worker")
def test_a_stored_event_whose_queue_message_was_lost_is_processed(
    db: Database, celery_app: Celery, user_id: uuid.UUID
) -> None:
    document = event("customer.subscription.created", subscription(user_id, "sub_lost"))
    store_without_queueing(db, document)

    run_reconciler(celery_app)

    assert wait_processed(db, document["id"])["status"] == "processed"
    assert plan_of(db, user_id) == "basic"


@pytest.mark.usefixtures("worker")
def test_events_stripe_lists_that_never_arrived_are_stored_and_processed(
    db: Database, celery_app: Celery, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    missed = event("customer.subscription.created", subscription(user_id, "sub_missed"))
    fake_stripe.events.append(missed)

    run_reconciler(celery_app)

    assert wait_processed(db, missed["id"])["status"] == "processed"
    assert plan_of(db, user_id) == "basic"
    listed = fake_stripe.calls("/v1/events")[0].params
    assert "customer.subscription.created" in listed["types"]


def test_a_pass_still_requeues_stored_events_when_stripe_is_down(
    db: Database, settings: Settings, fake_stripe: FakeStripe, user_id: uuid.UUID
) -> None:
    document = event("customer.subscription.created", subscription(user_id, "sub_down"))
    store_without_queueing(db, document)
    for _ in range(3):  # the first call and stripe-python's two retries
        fake_stripe.fail_next(500, "Stripe is having a bad day", error_type="api_error")
    queued: list[str] = []

    report = reconcile(db, settings, queued.append)

    assert report.api_error is not None
    assert "bad day" in report.api_error
    assert queued == [document["id"]]


def test_a_failed_event_waits_for_its_backoff(
    db: Database, settings: Settings, user_id: uuid.UUID
) -> None:
    document = event("customer.subscription.created", subscription(None, "sub_wait"))
    store_without_queueing(db, document)
    inbox.mark_failed(db, document["id"], "unknown user")
    queued: list[str] = []

    reconcile(db, settings.model_copy(update={"stripe_reconcile_from_api": False}), queued.append)

    assert queued == []


# --- admin endpoints ------------------------------------------------------------------------


@pytest.mark.usefixtures("worker")
def test_admins_list_failed_events_and_replay_one(
    live_server: LiveServer, db: Database, admin: ApiClient, user_id: uuid.UUID
) -> None:
    orphan = event(
        "customer.subscription.created", subscription(None, "sub_replay", customer="cus_replay")
    )
    assert deliver_and_wait(live_server, db, orphan) == "failed"

    listing = admin.get("/api/admin/stripe-events?status=failed")
    assert listing.status_code == 200
    [listed] = listing.json()["events"]
    assert listed["id"] == orphan["id"]
    assert "unknown user" in listed["last_error"]

    with db.transaction() as conn:
        conn.execute("select conveyor_ensure_account(%s)", (user_id,))
        conn.execute(
            "update user_accounts set stripe_customer_id = 'cus_replay' where user_id = %s",
            (user_id,),
        )
    replay = admin.post(f"/api/admin/stripe-events/{orphan['id']}/replay")

    assert replay.status_code == 202
    assert replay.json()["queued"] is True
    assert wait_processed(db, orphan["id"])["status"] == "processed"
    assert admin.get("/api/admin/stripe-events?status=failed").json()["events"] == []


def test_the_inbox_is_for_admins_only(client: ApiClient) -> None:
    assert client.get("/api/admin/stripe-events").status_code == 403
    assert client.post("/api/admin/stripe-events/evt_1/replay").status_code == 403


def test_bad_inbox_requests_are_400_or_404_with_a_code(admin: ApiClient) -> None:
    assert admin.get("/api/admin/stripe-events?status=lost").json()["code"] == "INVALID_INPUT"
    assert admin.get("/api/admin/stripe-events?cursor=zzz").json()["code"] == "INVALID_INPUT"
    missing = admin.post("/api/admin/stripe-events/evt_nope/replay")
    assert missing.status_code == 404
    assert missing.json()["code"] == "STRIPE_EVENT_NOT_FOUND"
