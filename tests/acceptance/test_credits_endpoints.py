"""Credits over HTTP: the balance (also under the `/api/tokens` names), its movements and their
summary, the rates, admin top-ups (audited), and deductions that never go below zero."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conveyor.auth.tokens import mint_service_token
from conveyor.db import Database
from tests.support import API_SECRET, ApiClient, token_for

ClientFactory = Callable[..., ApiClient]

# A new account starts on the free plan with its monthly grant.
FREE_GRANT = 100
INVALID_AMOUNTS = [1.5, 5.0, "5", True, 0, -1, 10**13, None]


def admin_client(make_client: ClientFactory) -> ApiClient:
    return make_client(token=token_for(uuid.uuid4(), admin=True))


def balance(client: ApiClient) -> int:
    response = client.get("/api/tokens")
    assert response.status_code == 200, response.text
    tokens: int = response.json()["tokens"]
    return tokens


def deduct(client: ApiClient, amount: Any) -> Any:
    return client.post("/api/tokens/deduct", json={"amount": amount})


def transactions(client: ApiClient, query: str = "") -> dict[str, Any]:
    response = client.get(f"/api/credits/transactions?{query}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def audit_rows(db: Database, action: str) -> list[dict[str, Any]]:
    with db.connection() as conn:
        return conn.execute(
            "select outcome, actor_user_id, subject, details from audit_logs where action = %s "
            "order by id",
            (action,),
        ).fetchall()


def test_a_new_user_has_the_free_plans_credits(client: ApiClient) -> None:
    """The first look creates the account: free plan, its monthly grant."""
    response = client.get("/api/credits")
    assert response.status_code == 200, response.text
    assert response.json() == {"credits": FREE_GRANT, "subscription_tier": "free"}


def test_tokens_reports_the_same_balance_as_credits(client: ApiClient) -> None:
    """`GET /api/tokens` is the credit balance under another name."""
    assert deduct(client, 7).status_code == 200
    assert client.get("/api/tokens").json() == {"tokens": FREE_GRANT - 7}
    assert client.get("/api/credits").json()["credits"] == FREE_GRANT - 7


def test_deduct_takes_credits_from_own_balance(client: ApiClient) -> None:
    """Deducting answers the new balance and the balance stays lower."""
    response = deduct(client, 30)
    assert response.status_code == 200, response.text
    assert response.json()["tokens"] == FREE_GRANT - 30
    assert balance(client) == FREE_GRANT - 30


def test_deduct_of_the_whole_balance_leaves_zero(client: ApiClient) -> None:
    """Exactly the balance may be taken."""
    assert deduct(client, FREE_GRANT).json()["tokens"] == 0
    assert balance(client) == 0


def test_deduct_beyond_the_balance_is_403_insufficient_credits_and_takes_nothing(
    client: ApiClient,
) -> None:
    """Asking for more than the balance takes nothing and says what was missing."""
    response = deduct(client, FREE_GRANT + 1)
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "INSUFFICIENT_CREDITS"
    assert body["details"] == {"required": FREE_GRANT + 1, "balance": FREE_GRANT}
    assert balance(client) == FREE_GRANT


def test_concurrent_deducts_never_overspend(
    client: ApiClient, make_client: ClientFactory, user_id: uuid.UUID
) -> None:
    """40 deducts of 5 against 100 credits: exactly 20 succeed and the balance ends at 0."""
    balance(client)
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: deduct(make_client(user_id), 5).status_code, range(40)))
    assert sorted(statuses) == [200] * 20 + [403] * 20
    assert balance(client) == 0


@pytest.mark.parametrize("amount", INVALID_AMOUNTS)
def test_deduct_of_an_amount_that_is_not_a_positive_integer_is_400_naming_amount(
    client: ApiClient, amount: Any
) -> None:
    """1.5, 5.0, "5", true, 0, negatives, 10^13 and null are refused; nothing is taken."""
    response = deduct(client, amount)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "INVALID_INPUT"
    assert [f["field"] for f in body["details"]["fields"]] == ["amount"]
    assert balance(client) == FREE_GRANT


def test_deduct_without_amount_is_400_naming_amount(client: ApiClient) -> None:
    """A body without `amount` names the missing field."""
    response = client.post("/api/tokens/deduct", json={})
    assert response.status_code == 400
    assert [f["field"] for f in response.json()["details"]["fields"]] == ["amount"]


def test_a_user_cannot_add_tokens_to_themselves(client: ApiClient) -> None:
    """Free credits are a hole: `POST /api/tokens/add` is admin-only."""
    response = client.post("/api/tokens/add", json={"amount": 50})
    assert response.status_code == 403
    assert response.json()["code"] == "FORBIDDEN"
    assert balance(client) == FREE_GRANT


def test_an_admin_adds_tokens_to_own_balance(make_client: ClientFactory) -> None:
    """An admin's top-up of their own balance answers the new balance."""
    admin = admin_client(make_client)
    response = admin.post("/api/tokens/add", json={"amount": 50})
    assert response.status_code == 200, response.text
    assert response.json()["tokens"] == FREE_GRANT + 50
    assert balance(admin) == FREE_GRANT + 50


def test_an_admin_adds_credits_to_a_user(
    client: ApiClient, make_client: ClientFactory, user_id: uuid.UUID
) -> None:
    """`{message, new_balance}`, and the user sees the new balance."""
    balance(client)  # the user's account exists once they have used the API
    response = admin_client(make_client).post(
        f"/api/users/{user_id}/add_credits", json={"amount": 250}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["new_balance"] == FREE_GRANT + 250
    assert str(user_id) in body["message"]
    assert balance(client) == FREE_GRANT + 250


def test_an_admin_top_up_is_audited(
    client: ApiClient, make_client: ClientFactory, db: Database, user_id: uuid.UUID
) -> None:
    """The audit log records who added how much to whom."""
    balance(client)
    admin_id = uuid.uuid4()
    admin = make_client(token=token_for(admin_id, admin=True))
    admin.post(f"/api/users/{user_id}/add_credits", json={"amount": 5})
    rows = audit_rows(db, "admin.credits.add")
    assert [(r["outcome"], r["actor_user_id"], r["subject"]) for r in rows] == [
        ("success", admin_id, str(user_id))
    ]
    assert rows[0]["details"] == {"amount": 5, "new_balance": FREE_GRANT + 5}


def test_an_admin_top_up_is_an_adjustment_transaction(
    client: ApiClient, make_client: ClientFactory, user_id: uuid.UUID
) -> None:
    """The user's transactions show the top-up as kind `adjustment`."""
    balance(client)
    admin_client(make_client).post(f"/api/users/{user_id}/add_credits", json={"amount": 5})
    newest = transactions(client)["transactions"][0]
    assert (newest["amount"], newest["kind"], newest["balance_after"]) == (
        5,
        "adjustment",
        FREE_GRANT + 5,
    )


def test_add_credits_needs_an_admin(
    client: ApiClient, make_client: ClientFactory, user_id: uuid.UUID
) -> None:
    """A user crediting anyone, even themselves, gets 403 FORBIDDEN."""
    balance(client)
    for actor in (client, make_client()):
        response = actor.post(f"/api/users/{user_id}/add_credits", json={"amount": 5})
        assert (response.status_code, response.json()["code"]) == (403, "FORBIDDEN")
    assert balance(client) == FREE_GRANT


@pytest.mark.parametrize("amount", INVALID_AMOUNTS)
def test_add_credits_of_an_amount_that_is_not_a_positive_integer_is_400_naming_amount(
    client: ApiClient, make_client: ClientFactory, user_id: uuid.UUID, amount: Any
) -> None:
    """The admin top-up validates `amount` like the deduct does; nothing is added."""
    balance(client)
    response = admin_client(make_client).post(
        f"/api/users/{user_id}/add_credits", json={"amount": amount}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "INVALID_INPUT"
    assert [f["field"] for f in body["details"]["fields"]] == ["amount"]
    assert balance(client) == FREE_GRANT


def test_add_credits_to_an_id_that_is_not_a_uuid_is_400_unknown_user(
    make_client: ClientFactory,
) -> None:
    """A malformed id cannot name a user."""
    response = admin_client(make_client).post("/api/users/bob/add_credits", json={"amount": 5})
    assert response.status_code == 400
    assert response.json()["code"] == "UNKNOWN_USER"


def test_add_credits_to_an_unknown_user_is_400_and_creates_no_account(
    make_client: ClientFactory, db: Database
) -> None:
    """A well-formed id nobody has (no account, not in auth.users) credits nobody."""
    stranger = uuid.uuid4()
    response = admin_client(make_client).post(
        f"/api/users/{stranger}/add_credits", json={"amount": 5}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "UNKNOWN_USER"
    with db.connection() as conn:
        found = conn.execute(
            "select 1 from user_accounts where user_id = %s", (stranger,)
        ).fetchone()
    assert found is None


def test_add_credits_to_a_signed_up_user_without_an_account_creates_it(
    make_client: ClientFactory, db: Database
) -> None:
    """A user in Supabase Auth who never called the API gets the grant plus the top-up."""
    newcomer = uuid.uuid4()
    with db.transaction() as conn:
        conn.execute("insert into auth.users (id) values (%s)", (newcomer,))
    response = admin_client(make_client).post(
        f"/api/users/{newcomer}/add_credits", json={"amount": 5}
    )
    assert response.status_code == 200, response.text
    assert response.json()["new_balance"] == FREE_GRANT + 5


def test_transactions_are_listed_newest_first_with_a_cursor(client: ApiClient) -> None:
    """The grant and two deducts come back newest first, two and then one."""
    deduct(client, 10)
    deduct(client, 20)
    first = transactions(client, "limit=2")
    assert [t["amount"] for t in first["transactions"]] == [-20, -10]
    assert [t["balance_after"] for t in first["transactions"]] == [70, 90]
    second = transactions(client, f"limit=2&cursor={first['next_cursor']}")
    assert [(t["amount"], t["kind"]) for t in second["transactions"]] == [(FREE_GRANT, "grant")]
    assert second["next_cursor"] is None


def test_transactions_of_other_users_are_not_listed(
    client: ApiClient, make_client: ClientFactory
) -> None:
    """A stranger's movements stay out of the caller's listing."""
    stranger = make_client()
    deduct(stranger, 3)
    deduct(client, 1)
    assert [t["amount"] for t in transactions(client)["transactions"]] == [-1, FREE_GRANT]


def test_transactions_with_a_forged_cursor_is_400(client: ApiClient) -> None:
    """A cursor this API did not return is INVALID_INPUT."""
    response = client.get("/api/credits/transactions?cursor=bm9wZQ")
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_INPUT"


def test_transactions_summary_adds_up_to_the_balance(
    client: ApiClient, make_client: ClientFactory, user_id: uuid.UUID
) -> None:
    """Added (grant + top-up) minus used (deducts) is the current balance."""
    deduct(client, 30)
    admin_client(make_client).post(f"/api/users/{user_id}/add_credits", json={"amount": 50})
    deduct(client, 5)
    response = client.get("/api/credits/transactions/summary")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "total_added": FREE_GRANT + 50,
        "total_used": 35,
        "current_balance": FREE_GRANT + 15,
    }


def test_transactions_summary_of_a_new_user_is_the_grant(client: ApiClient) -> None:
    """A first-time caller's summary already shows the plan's grant."""
    assert client.get("/api/credits/transactions/summary").json() == {
        "total_added": FREE_GRANT,
        "total_used": 0,
        "current_balance": FREE_GRANT,
    }


def test_rates_list_the_credit_rates(client: ApiClient) -> None:
    """Every rate in the credit_rates table, by endpoint."""
    response = client.get("/api/credits/rates")
    assert response.status_code == 200, response.text
    assert [(r["endpoint"], r["credits"]) for r in response.json()["rates"]] == [
        ("agent:*", 1),
        ("agent:echo", 0),
        ("workflow:*", 2),
    ]


def test_credit_endpoints_refuse_service_tokens(make_client: ClientFactory) -> None:
    """Balances belong to users: a service token gets 403 FORBIDDEN."""
    service = make_client(token=mint_service_token("billing", ["usage:write"], secret=API_SECRET))
    for path in ("/api/credits", "/api/tokens", "/api/credits/transactions"):
        response = service.get(path)
        assert (response.status_code, response.json()["code"]) == (403, "FORBIDDEN"), path
    response = service.post("/api/tokens/deduct", json={"amount": 1})
    assert (response.status_code, response.json()["code"]) == (403, "FORBIDDEN")
