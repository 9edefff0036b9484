"""POST /api/payments/create-checkout-session against a local server speaking Stripe's API."""

from __future__ import annotations

import uuid
from typing import Any

from conveyor.db import Database
from conveyor.settings import Settings
from tests.fake_stripe import FakeStripe
from tests.support import ApiClient, LiveServer, token_for

USES_FAKE_STRIPE = True
SETTINGS = {
    "stripe_prices": {
        "price_basic": {"plan": "basic"},
        "price_pack_100": {"credits": 100},
    },
    "stripe_price_id": "price_basic",
    "stripe_success_url": "https://app.example.com/billing/done",
    "stripe_cancel_url": "https://app.example.com/billing",
}
CHECKOUT = "/api/payments/create-checkout-session"


def checkout(client: ApiClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post(CHECKOUT, json=body, headers=headers)


def test_defaults_create_a_subscription_checkout_for_the_caller(
    client: ApiClient, user_id: uuid.UUID, fake_stripe: FakeStripe
) -> None:
    response = checkout(client, {})

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("cs_test_")
    assert body["url"].startswith("https://checkout.stripe.com/")
    sent = fake_stripe.calls("/v1/checkout/sessions")[0].params
    assert sent["mode"] == "subscription"
    assert sent["line_items"] == [{"price": "price_basic", "quantity": "1"}]
    assert sent["client_reference_id"] == str(user_id)
    assert sent["success_url"] == SETTINGS["stripe_success_url"]
    assert sent["metadata"]["conveyor_plan"] == "basic"
    assert sent["subscription_data"]["metadata"]["conveyor_user_id"] == str(user_id)


def test_a_credit_pack_is_a_payment_whose_metadata_says_how_many_credits(
    client: ApiClient, fake_stripe: FakeStripe
) -> None:
    response = checkout(
        client, {"price_id": "price_pack_100", "quantity": 3, "metadata": {"campaign": "x"}}
    )

    assert response.status_code == 201, response.text
    sent = fake_stripe.calls("/v1/checkout/sessions")[0].params
    assert sent["mode"] == "payment"
    assert sent["metadata"] == {
        "campaign": "x",
        "conveyor_user_id": sent["client_reference_id"],
        "conveyor_price_id": "price_pack_100",
        "conveyor_credits": "300",
    }


def test_the_users_stripe_customer_is_created_once_and_reused(
    client: ApiClient, user_id: uuid.UUID, fake_stripe: FakeStripe, db: Database
) -> None:
    assert checkout(client, {"customer_email": "ada@example.com"}).status_code == 201
    assert checkout(client, {}).status_code == 201

    customers = fake_stripe.calls("/v1/customers")
    assert len(customers) == 1
    assert customers[0].params["email"] == "ada@example.com"
    assert customers[0].headers["idempotency-key"] == f"conveyor-customer-{user_id}"
    sessions = fake_stripe.calls("/v1/checkout/sessions")
    assert sessions[0].params["customer"] == sessions[1].params["customer"]
    with db.transaction() as conn:
        row = conn.execute(
            "select stripe_customer_id from user_accounts where user_id = %s", (user_id,)
        ).fetchone()
    assert row is not None
    assert row["stripe_customer_id"] == sessions[0].params["customer"]


def test_the_same_idempotency_key_returns_the_same_session(
    client: ApiClient, fake_stripe: FakeStripe
) -> None:
    first = checkout(client, {}, **{"Idempotency-Key": "buy-1"})
    again = checkout(client, {}, **{"Idempotency-Key": "buy-1"})

    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    keys = {r.headers["idempotency-key"] for r in fake_stripe.calls("/v1/checkout/sessions")}
    assert len(keys) == 1
    assert keys.pop().endswith("-buy-1")


def test_an_idempotency_key_reused_for_another_checkout_is_a_conflict(client: ApiClient) -> None:
    assert checkout(client, {}, **{"Idempotency-Key": "k"}).status_code == 201

    response = checkout(client, {"price_id": "price_pack_100"}, **{"Idempotency-Key": "k"})

    assert response.status_code == 409
    assert response.json()["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_a_stripe_error_is_a_502_with_stripes_message(
    client: ApiClient, fake_stripe: FakeStripe
) -> None:
    fake_stripe.fail_next(400, "No such price: 'price_basic'", code="resource_missing")

    response = checkout(client, {})

    assert response.status_code == 502
    body = response.json()
    assert body["code"] == "PAYMENT_PROVIDER_ERROR"
    assert "No such price: 'price_basic'" in body["error"]


def test_a_price_outside_the_catalogue_is_refused_before_stripe_is_called(
    client: ApiClient, fake_stripe: FakeStripe
) -> None:
    response = checkout(client, {"price_id": "price_someone_elses"})

    assert response.status_code == 400
    assert response.json()["code"] == "UNKNOWN_PRICE"
    assert fake_stripe.requests == []


def test_bad_checkout_requests_are_400_with_a_code(
    client: ApiClient, fake_stripe: FakeStripe
) -> None:
    bad_bodies = [
        {"price_id": "price_pack_100", "mode": "subscription"},
        {"quantity": 2},
        {"quantity": 0},
        {"success_url": "javascript:alert(1)"},
        {"metadata": {"conveyor_credits": "1000000"}},
        {"customer_email": "not an email"},
        {"unknown": 1},
    ]
    for body in bad_bodies:
        response = checkout(client, body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["code"] == "INVALID_INPUT", body
    assert fake_stripe.requests == []


def test_checkout_needs_a_signed_in_user(anonymous: ApiClient) -> None:
    assert checkout(anonymous, {}).status_code == 401


def test_checkout_without_a_stripe_key_is_503_not_configured(settings: Settings) -> None:
    unconfigured = settings.model_copy(update={"stripe_secret_key": None})
    with LiveServer(unconfigured) as server:
        client = ApiClient(server.url, token_for(uuid.uuid4()))
        response = checkout(client, {})
    assert response.status_code == 503
    assert response.json()["code"] == "PAYMENTS_NOT_CONFIGURED"
