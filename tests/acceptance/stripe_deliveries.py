"""Stripe deliveries for the webhook tests: signed as Stripe signs them, posted over HTTP, and the
rows they leave behind."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import requests

from conveyor.db import Database
from conveyor.ledger import accounts
from tests.fake_stripe import sign
from tests.support import LiveServer

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
