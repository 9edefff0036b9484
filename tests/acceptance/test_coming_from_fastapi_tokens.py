"""Seed 004 (FastAPI + Supabase tokens), called as its document writes it: every `/api/v1`
endpoint, with and without the trailing slash, answering the documented fields; auth against a
server speaking Supabase Auth's API, purchases through Stripe's."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from conveyor.db import Database
from tests.acceptance import stripe_deliveries
from tests.acceptance.stripe_deliveries import deliver_and_wait, ledger_rows
from tests.fake_stripe import FakeStripe, credit_pack_session, event
from tests.fake_supabase_auth import FakeSupabaseAuth
from tests.support import ApiClient, LiveServer

USES_FAKE_AUTH = True
USES_FAKE_STRIPE = True
SETTINGS = stripe_deliveries.SETTINGS
FREE_PLAN_CREDITS = 100  # what a new account starts with (plans.monthly_credit_grant of free)

ClientFactory = Callable[..., ApiClient]
SLASHES = pytest.mark.parametrize("slash", ["", "/"])


def sign_up(anonymous: ApiClient, slash: str = "", email: str = "ada@example.com") -> Any:
    response = anonymous.post(
        f"/api/v1/auth/signup{slash}", json={"email": email, "password": "correct horse"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def paid_pack(fake_stripe: FakeStripe, user: uuid.UUID, credits: int = 300) -> dict[str, Any]:
    """A credit pack the user paid for in Stripe Checkout (Stripe has its completed event)."""
    session = credit_pack_session(user, credits=credits)
    fake_stripe.events.append(event("checkout.session.completed", session))
    return session


@SLASHES
def test_signup_returns_supabase_tokens_the_user_and_the_token_balance(
    anonymous: ApiClient, fake_auth: FakeSupabaseAuth, slash: str
) -> None:
    body = sign_up(anonymous, slash)

    assert body["access_token"]
    assert body["refresh_token"]
    assert body["token_type"] == "bearer"
    assert body["user"]["email"] == "ada@example.com"
    assert uuid.UUID(body["user"]["id"]) in fake_auth.users
    assert body["token"] == FREE_PLAN_CREDITS


@SLASHES
def test_signin_returns_supabase_tokens_and_the_current_balance(
    anonymous: ApiClient, make_client: ClientFactory, slash: str
) -> None:
    signed_up = sign_up(anonymous)
    make_client(token=signed_up["access_token"]).post("/api/v1/tokens/deduct", json={"amount": 30})

    response = anonymous.post(
        f"/api/v1/auth/signin{slash}",
        json={"email": "ada@example.com", "password": "correct horse"},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["access_token"]
    assert body["refresh_token"]
    assert body["user"]["id"] == signed_up["user"]["id"]
    assert body["token"] == FREE_PLAN_CREDITS - 30


@SLASHES
def test_supabases_access_token_is_accepted_by_the_rest_of_the_api(
    anonymous: ApiClient, make_client: ClientFactory, slash: str
) -> None:
    session = make_client(token=sign_up(anonymous)["access_token"])
    response = session.get(f"/api/v1/tokens{slash}")
    assert response.status_code == 200, response.text
    assert session.get("/api/credits").json()["credits"] == response.json()["token"]


@SLASHES
def test_signout_revokes_the_supabase_session(
    anonymous: ApiClient, make_client: ClientFactory, fake_auth: FakeSupabaseAuth, slash: str
) -> None:
    session = make_client(token=sign_up(anonymous)["access_token"])

    response = session.post(f"/api/v1/auth/signout{slash}")

    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Signed out."}
    assert fake_auth.sessions == {}


@SLASHES
def test_profile_get_post_put_delete(make_client: ClientFactory, slash: str) -> None:
    client = make_client()
    path = f"/api/v1/profile{slash}"
    assert client.get(path).status_code == 404

    created = client.post(path, json={"profile_data": {"name": "Ada", "skills": ["math"]}})
    assert created.status_code == 200, created.text
    assert created.json()["profile_data"] == {"name": "Ada", "skills": ["math"]}
    assert client.get(path).json() == created.json()

    upserted = client.post(path, json={"profile_data": {"name": "Ada L."}})
    assert upserted.json()["id"] == created.json()["id"]
    updated = client.request("PUT", path, json={"profile_data": {"name": "Ada Lovelace"}})
    assert updated.status_code == 200, updated.text
    fetched = client.get(path).json()
    assert fetched["profile_data"] == {"name": "Ada Lovelace"}
    assert fetched["updated_at"] >= fetched["created_at"]

    assert client.request("DELETE", path).status_code == 200
    assert client.get(path).status_code == 404


def test_a_profile_is_its_owners_alone(make_client: ClientFactory) -> None:
    owner, stranger = make_client(), make_client()
    owner.post("/api/v1/profile", json={"profile_data": {"cv": "mine"}})
    assert stranger.get("/api/v1/profile").status_code == 404
    assert stranger.request("PUT", "/api/v1/profile", json={"profile_data": {}}).status_code == 404
    assert stranger.request("DELETE", "/api/v1/profile").status_code == 404
    assert owner.get("/api/v1/profile").json()["profile_data"] == {"cv": "mine"}


@SLASHES
def test_tokens_returns_the_balance(
    make_client: ClientFactory, user_id: uuid.UUID, slash: str
) -> None:
    body = make_client(user_id).get(f"/api/v1/tokens{slash}").json()
    assert body["user_id"] == str(user_id)
    assert body["token"] == FREE_PLAN_CREDITS
    assert body["updated_at"]


@SLASHES
def test_tokens_deduct_takes_tokens_and_answers_the_new_balance(
    make_client: ClientFactory, slash: str
) -> None:
    client = make_client()
    response = client.post(f"/api/v1/tokens/deduct{slash}", json={"amount": 40})
    assert response.status_code == 200, response.text
    assert response.json()["token"] == FREE_PLAN_CREDITS - 40
    assert client.get("/api/v1/tokens").json()["token"] == FREE_PLAN_CREDITS - 40


@SLASHES
def test_tokens_add_after_a_purchase_adds_what_the_checkout_bought(
    make_client: ClientFactory, fake_stripe: FakeStripe, user_id: uuid.UUID, slash: str
) -> None:
    session = paid_pack(fake_stripe, user_id)

    response = make_client(user_id).post(
        f"/api/v1/tokens/add{slash}",
        json={"amount": 300, "checkout_session_id": session["id"]},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["token"], body["added"]) == (FREE_PLAN_CREDITS + 300, 300)


@SLASHES
def test_tokens_add_by_asking_is_403_saying_how_to_buy(
    make_client: ClientFactory, slash: str
) -> None:
    client = make_client()
    response = client.post(f"/api/v1/tokens/add{slash}", json={"amount": 1000})
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "PURCHASE_REQUIRED"
    assert "create-checkout-session" in body["detail"]
    assert client.get("/api/v1/tokens").json()["token"] == FREE_PLAN_CREDITS


@pytest.mark.usefixtures("worker")
def test_the_typical_flow_sign_up_buy_spend_and_the_webhook_adds_nothing_twice(
    anonymous: ApiClient,
    make_client: ClientFactory,
    fake_stripe: FakeStripe,
    live_server: LiveServer,
    db: Database,
) -> None:
    signed_up = sign_up(anonymous)
    user = uuid.UUID(signed_up["user"]["id"])
    client = make_client(token=signed_up["access_token"])
    session = paid_pack(fake_stripe, user, credits=500)

    added = client.post(
        "/api/v1/tokens/add", json={"amount": 500, "checkout_session_id": session["id"]}
    )
    spent = client.post("/api/v1/tokens/deduct", json={"amount": 120})
    webhook = deliver_and_wait(live_server, db, fake_stripe.events[-1])

    assert added.json()["token"] == FREE_PLAN_CREDITS + 500
    assert spent.json()["token"] == FREE_PLAN_CREDITS + 500 - 120
    assert webhook == "processed"
    assert client.get("/api/v1/tokens").json()["token"] == FREE_PLAN_CREDITS + 500 - 120
    purchases = [r for r in ledger_rows(db, user) if r["kind"] == "purchase"]
    assert purchases == [{"amount": 500, "kind": "purchase", "reference": session["id"]}]
