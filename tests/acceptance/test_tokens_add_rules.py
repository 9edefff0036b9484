"""`/api/v1/tokens/add` and `/deduct` keep the ledger's rules: a user adds tokens only with a paid
credit pack checkout of theirs, granted once between the claim and Stripe's webhook; admins and
`credits:write` services add; nothing goes below zero; a bad body is 422, never a 5xx."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests

from conveyor.auth.tokens import mint_service_token
from conveyor.db import Database
from conveyor.ledger import accounts
from tests.acceptance import stripe_deliveries
from tests.acceptance.stripe_deliveries import deliver_and_wait, ledger_rows
from tests.fake_stripe import FakeStripe, credit_pack_session, event
from tests.support import API_SECRET, ApiClient, LiveServer, token_for

USES_FAKE_STRIPE = True
SETTINGS = stripe_deliveries.SETTINGS
ADD, DEDUCT = "/api/v1/tokens/add", "/api/v1/tokens/deduct"

ClientFactory = Callable[..., ApiClient]


def published(fake_stripe: FakeStripe, session: dict[str, Any]) -> dict[str, Any]:
    """Stripe has the session (as its latest event shows it); returns that event."""
    document = event("checkout.session.completed", session)
    fake_stripe.events.append(document)
    return document


def balance(db: Database, user: uuid.UUID) -> int:
    return accounts.account(db, user).credit_balance


def purchases(db: Database, user: uuid.UUID) -> list[dict[str, Any]]:
    return [r for r in ledger_rows(db, user) if r["kind"] == "purchase"]


def refused(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert isinstance(body["error"], str)
    assert body["detail"]
    return body


# Claiming a checkout session


def test_claiming_the_same_session_again_adds_nothing(
    make_client: ClientFactory, fake_stripe: FakeStripe, db: Database, user_id: uuid.UUID
) -> None:
    session = credit_pack_session(user_id, credits=250)
    published(fake_stripe, session)
    client = make_client(user_id)
    claim = {"amount": 250, "checkout_session_id": session["id"]}

    first, second = client.post(ADD, json=claim), client.post(ADD, json=claim)

    assert first.json()["added"] == 250
    assert second.status_code == 200
    assert (second.json()["added"], second.json()["token"]) == (0, first.json()["token"])
    assert len(purchases(db, user_id)) == 1


def test_concurrent_claims_grant_once(
    live_server: LiveServer, fake_stripe: FakeStripe, db: Database, user_id: uuid.UUID
) -> None:
    session = credit_pack_session(user_id, credits=100)
    published(fake_stripe, session)
    answers: list[dict[str, Any]] = []

    def claim() -> None:
        client = ApiClient(live_server.url, token_for(user_id))
        response = client.post(ADD, json={"amount": 100, "checkout_session_id": session["id"]})
        answers.append(response.json())

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(a["added"] for a in answers) == [0, 0, 0, 0, 0, 100]
    assert len(purchases(db, user_id)) == 1


@pytest.mark.usefixtures("worker")
def test_a_session_the_webhook_granted_first_is_not_granted_again(
    make_client: ClientFactory,
    fake_stripe: FakeStripe,
    live_server: LiveServer,
    db: Database,
    user_id: uuid.UUID,
) -> None:
    session = credit_pack_session(user_id, credits=300)
    assert deliver_and_wait(live_server, db, published(fake_stripe, session)) == "processed"
    after_webhook = balance(db, user_id)

    response = make_client(user_id).post(
        ADD, json={"amount": 300, "checkout_session_id": session["id"]}
    )

    assert response.status_code == 200, response.text
    assert (response.json()["added"], response.json()["token"]) == (0, after_webhook)
    assert len(purchases(db, user_id)) == 1


@pytest.mark.usefixtures("worker")
def test_the_webhook_after_a_claim_grants_nothing_more(
    make_client: ClientFactory,
    fake_stripe: FakeStripe,
    live_server: LiveServer,
    db: Database,
    user_id: uuid.UUID,
) -> None:
    session = credit_pack_session(user_id, credits=300)
    document = published(fake_stripe, session)
    claimed = make_client(user_id).post(
        ADD, json={"amount": 300, "checkout_session_id": session["id"]}
    )

    assert deliver_and_wait(live_server, db, document) == "processed"

    assert balance(db, user_id) == claimed.json()["token"]
    assert len(purchases(db, user_id)) == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"payment_status": "unpaid"}, "not paid yet"),
        ({"mode": "subscription"}, "did not buy a credit pack"),
        ({"metadata": {}, "client_reference_id": None}, "not bought by you"),
    ],
)
def test_a_session_that_did_not_pay_for_tokens_is_refused(
    make_client: ClientFactory,
    fake_stripe: FakeStripe,
    db: Database,
    user_id: uuid.UUID,
    change: dict[str, Any],
    reason: str,
) -> None:
    session = {**credit_pack_session(user_id), **change}
    published(fake_stripe, session)
    before = balance(db, user_id)

    response = make_client(user_id).post(
        ADD, json={"amount": 100, "checkout_session_id": session["id"]}
    )

    assert reason in refused(response, 403, "PURCHASE_REQUIRED")["error"]
    assert balance(db, user_id) == before


def test_someone_elses_session_is_refused(
    make_client: ClientFactory, fake_stripe: FakeStripe, db: Database
) -> None:
    buyer, thief = uuid.uuid4(), uuid.uuid4()
    session = credit_pack_session(buyer)
    published(fake_stripe, session)

    response = make_client(thief).post(
        ADD, json={"amount": 100, "checkout_session_id": session["id"]}
    )

    refused(response, 403, "PURCHASE_REQUIRED")
    assert purchases(db, buyer) == purchases(db, thief) == []


def test_a_session_stripe_does_not_have_is_refused(make_client: ClientFactory) -> None:
    response = make_client().post(ADD, json={"amount": 100, "checkout_session_id": "cs_test_nope"})
    assert "no checkout session" in refused(response, 403, "PURCHASE_REQUIRED")["error"]


def test_an_amount_other_than_what_was_bought_is_refused(
    make_client: ClientFactory, fake_stripe: FakeStripe, db: Database, user_id: uuid.UUID
) -> None:
    session = credit_pack_session(user_id, credits=100)
    published(fake_stripe, session)
    response = make_client(user_id).post(
        ADD, json={"amount": 1_000_000, "checkout_session_id": session["id"]}
    )
    refused(response, 400, "AMOUNT_MISMATCH")
    assert purchases(db, user_id) == []


def test_a_user_cannot_add_to_someone_else(make_client: ClientFactory) -> None:
    response = make_client().post(ADD, json={"amount": 5, "user_id": str(uuid.uuid4())})
    refused(response, 403, "PURCHASE_REQUIRED")


# Admins and services


def test_an_admin_adds_to_themselves_and_to_a_known_user(
    make_client: ClientFactory, db: Database
) -> None:
    admin_id, customer = uuid.uuid4(), uuid.uuid4()
    accounts.account(db, customer)
    admin = make_client(token=token_for(admin_id, admin=True))

    own = admin.post(ADD, json={"amount": 50})
    theirs = admin.post(ADD, json={"amount": 70, "user_id": str(customer)})

    assert (own.status_code, own.json()["user_id"], own.json()["added"]) == (200, str(admin_id), 50)
    assert theirs.json()["token"] == balance(db, customer)
    refused(admin.post(ADD, json={"amount": 1, "user_id": str(uuid.uuid4())}), 400, "UNKNOWN_USER")


def test_an_admin_may_claim_a_users_checkout_for_them(
    make_client: ClientFactory, fake_stripe: FakeStripe, db: Database, user_id: uuid.UUID
) -> None:
    session = credit_pack_session(user_id, credits=100)
    published(fake_stripe, session)
    admin = make_client(token=token_for(uuid.uuid4(), admin=True))

    response = admin.post(ADD, json={"amount": 100, "checkout_session_id": session["id"]})

    assert response.status_code == 200, response.text
    assert (response.json()["user_id"], response.json()["added"]) == (str(user_id), 100)
    assert len(purchases(db, user_id)) == 1


def test_a_service_token_needs_scope_credits_write_and_a_user(
    make_client: ClientFactory, db: Database, user_id: uuid.UUID
) -> None:
    accounts.account(db, user_id)
    before = balance(db, user_id)
    usage_only = make_client(
        token=mint_service_token("billing", ["usage:write"], secret=API_SECRET)
    )
    shop = make_client(token=mint_service_token("shop", ["credits:write"], secret=API_SECRET))

    refused(usage_only.post(ADD, json={"amount": 5, "user_id": str(user_id)}), 403, "FORBIDDEN")
    refused(shop.post(ADD, json={"amount": 5}), 422, "INVALID_INPUT")
    added = shop.post(ADD, json={"amount": 5, "user_id": str(user_id)})

    assert added.status_code == 200, added.text
    assert balance(db, user_id) == before + 5


# Deducting


def test_deducting_more_than_the_balance_takes_nothing(
    make_client: ClientFactory, db: Database, user_id: uuid.UUID
) -> None:
    client = make_client(user_id)
    before = client.get("/api/v1/tokens").json()["token"]

    body = refused(client.post(DEDUCT, json={"amount": before + 1}), 403, "INSUFFICIENT_CREDITS")

    assert body["details"] == {"required": before + 1, "balance": before}
    assert balance(db, user_id) == before
    assert client.post(DEDUCT, json={"amount": before}).json()["token"] == 0


# Bad input: FastAPI's 422 with its `detail` list


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (ADD, {"amount": 0}),
        (ADD, {"amount": -5}),
        (ADD, {"amount": "5"}),
        (ADD, {"amount": 1.5}),
        (ADD, {"amount": 10**13}),
        (ADD, {"amount": 5, "checkout_session_id": "pi_not_a_session"}),
        (DEDUCT, {}),
        (DEDUCT, {"amount": True}),
        ("/api/v1/profile", {"profile_data": [1, 2]}),
        ("/api/v1/profile", {}),
    ],
)
def test_a_bad_body_is_422_with_fastapis_detail(
    make_client: ClientFactory, path: str, body: dict[str, Any]
) -> None:
    response = make_client().post(path, json=body)
    refused(response, 422, "INVALID_INPUT")
    problem = response.json()["detail"][0]
    assert problem["loc"][0] == "body"
    assert {"type", "msg"} <= problem.keys()


@pytest.mark.parametrize(
    ("data", "content_type", "code"),
    [
        ("{not json", "application/json", "INVALID_JSON"),
        ("amount=5", "application/x-www-form-urlencoded", "INVALID_CONTENT_TYPE"),
        ("[1, 2]", "application/json", "INVALID_INPUT"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_422(
    make_client: ClientFactory, data: str, content_type: str, code: str
) -> None:
    response = make_client().post(DEDUCT, data=data, headers={"Content-Type": content_type})
    refused(response, 422, code)


def test_without_a_token_it_is_401_with_detail(anonymous: ApiClient) -> None:
    refused(anonymous.get("/api/v1/tokens"), 401, "UNAUTHORIZED")
