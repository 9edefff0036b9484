"""POST /api/payments/webhook: deliveries signed as Stripe signs them, sent over HTTP to the running
app: refused unless signed with a current secret, stored once, answered 200 even while Redis is
down. Processing by a worker: test_stripe_processing.py."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from conveyor.cli.services import free_port
from conveyor.db import Database
from tests.acceptance.stripe_deliveries import (
    OLD_SECRET,
    SECRET,
    SETTINGS,
    WEBHOOK,
    deliver,
    stored,
)
from tests.fake_stripe import event, sign, subscription
from tests.support import LiveServer, make_settings


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


# --- Redis down -----------------------------------------------------------------------------


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
