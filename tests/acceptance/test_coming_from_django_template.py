"""Seed 003 (the Django + Supabase template), called as its document writes it: every path with
its trailing slash answering the documented fields, auth against a server speaking Supabase
Auth's API (the daily limits and per-path credits: test_coming_from_django_template_limits.py)."""

from __future__ import annotations

import uuid

from conveyor.db import Database
from conveyor.settings import Settings
from tests.acceptance.django_template_calls import (
    CREDENTIALS,
    ClientFactory,
    add_rate,
    log_in,
    register,
    top_up,
)
from tests.fake_supabase_auth import SERVICE_KEY, FakeSupabaseAuth
from tests.support import ApiClient, LiveServer, token_for

USES_FAKE_AUTH = True
SETTINGS = {"supabase_service_role_key": SERVICE_KEY}
FREE_PLAN_CREDITS = 100  # what a new account starts with (plans.monthly_credit_grant of free)
REGISTERED_FIELDS = {"id", "email", "app_metadata", "user_metadata", "aud", "confirmation_sent_at"}


def test_health_answers_status_ok(anonymous: ApiClient) -> None:
    response = anonymous.get("/api/health/")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"


def test_register_answers_the_new_supabase_user_who_gets_an_account(
    anonymous: ApiClient, fake_auth: FakeSupabaseAuth, make_client: ClientFactory
) -> None:
    body = register(anonymous)

    assert set(body) >= REGISTERED_FIELDS
    assert uuid.UUID(body["id"]) in fake_auth.users
    assert (body["email"], body["aud"]) == ("ada@example.com", "authenticated")
    assert body["app_metadata"]["provider"] == "email"
    account = make_client(uuid.UUID(body["id"])).get("/api/credits/").json()
    assert account == {"credits": FREE_PLAN_CREDITS, "subscription_tier": "free"}


def test_register_awaiting_confirmation_says_when_the_email_was_sent_and_opens_no_account(
    anonymous: ApiClient, fake_auth: FakeSupabaseAuth, db: Database
) -> None:
    fake_auth.autoconfirm = False
    body = register(anonymous)

    assert body["confirmation_sent_at"]
    with db.transaction() as conn:
        opened = conn.execute("select count(*) as n from user_accounts").fetchone()
    assert opened is not None
    assert opened["n"] == 0


def test_login_returns_supabase_tokens_and_the_user(
    anonymous: ApiClient, make_client: ClientFactory
) -> None:
    registered = register(anonymous)

    body = log_in(anonymous)

    assert body["access_token"]
    assert body["refresh_token"]
    assert (body["token_type"], body["expires_in"]) == ("bearer", 3600)
    assert body["user"] == {"id": registered["id"], "email": "ada@example.com"}
    assert make_client(token=body["access_token"]).get("/api/credits/").status_code == 200


def test_user_info_returns_the_caller_from_the_token_and_supabase(
    anonymous: ApiClient, make_client: ClientFactory
) -> None:
    registered = register(anonymous)
    session = make_client(token=log_in(anonymous)["access_token"])

    response = session.get("/api/user/")

    assert response.status_code == 200, response.text
    body = response.json()
    user = registered["id"]
    assert (body["id"], body["username"], body["supabase_id"]) == (user, user, user)
    assert body["email"] == "ada@example.com"
    assert body["roles"] == ["authenticated"]
    assert body["claims"]["sub"] == user
    assert body["supabase_data"]["id"] == user


def test_logout_revokes_the_supabase_session(
    anonymous: ApiClient, make_client: ClientFactory
) -> None:
    register(anonymous)
    session = make_client(token=log_in(anonymous)["access_token"])

    response = session.post("/api/logout/")

    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Logged out successfully"}
    # Supabase Auth no longer knows the session, so it refuses the token's user.
    assert session.get("/api/user/").json()["code"] == "SUPABASE_USER_REJECTED"


def test_without_supabase_url_auth_endpoints_answer_503_with_detail(settings: Settings) -> None:
    unconfigured = settings.model_copy(update={"supabase_url": None})
    with LiveServer(unconfigured) as server:
        anonymous = ApiClient(server.url, None)
        user = ApiClient(server.url, token_for(uuid.uuid4(), admin=True))
        responses = [
            anonymous.post("/api/register/", json=CREDENTIALS),
            anonymous.post("/api/login/", json=CREDENTIALS),
            user.post("/api/logout/"),
            user.get("/api/users/supabase_users/"),
        ]
        info = user.get("/api/user/")
    for response in responses:
        assert response.status_code == 503, response.request.path_url
        body = response.json()
        assert (body["code"], body["detail"]) == ("AUTH_NOT_CONFIGURED", body["error"])
    assert (info.status_code, info.json()["supabase_data"]) == (200, None)


def test_users_lists_every_account_with_its_profile_for_admins(
    admin: ApiClient, anonymous: ApiClient, db: Database
) -> None:
    registered = register(anonymous)
    with db.transaction() as conn:  # Supabase Auth's own table, which the fake does not keep
        conn.execute(
            "insert into auth.users (id, email) values (%s, %s)", (registered["id"], "ada@x.io")
        )

    response = admin.get("/api/users/")

    assert response.status_code == 200, response.text
    listed = {user["id"]: user for user in response.json()}
    ada = listed[registered["id"]]
    assert (ada["username"], ada["email"]) == (registered["id"], "ada@x.io")
    profile = ada["profile"]
    assert (profile["supabase_uid"], profile["subscription_tier"]) == (registered["id"], "free")
    assert profile["credits_balance"] == FREE_PLAN_CREDITS
    assert profile["created_at"]
    assert profile["updated_at"]


def test_admin_endpoints_refuse_users_with_detail(client: ApiClient) -> None:
    for method, path in [
        ("GET", "/api/users/"),
        ("GET", "/api/users/supabase_users/"),
        ("POST", f"/api/users/{uuid.uuid4()}/add_credits/"),
    ]:
        response = client.request(method, path, json={"amount": 100})
        assert response.status_code == 403, path
        body = response.json()
        assert (body["code"], body["detail"]) == ("FORBIDDEN", body["error"])


def test_users_me_returns_the_caller_with_their_profile(
    client: ApiClient, user_id: uuid.UUID
) -> None:
    response = client.get("/api/users/me/")

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["username"]) == (str(user_id), str(user_id))
    assert body["profile"]["supabase_uid"] == str(user_id)
    assert body["profile"]["credits_balance"] == FREE_PLAN_CREDITS


def test_add_credits_adds_to_the_user_and_answers_the_new_balance(
    admin: ApiClient, make_client: ClientFactory
) -> None:
    user = uuid.uuid4()
    make_client(user).get("/api/credits/")

    response = admin.post(f"/api/users/{user}/add_credits/", json={"amount": 100})

    assert response.status_code == 200, response.text
    assert response.json() == {
        "message": f"Added 100 credits to {user}'s account",
        "new_balance": FREE_PLAN_CREDITS + 100,
    }
    assert make_client(user).get("/api/credits/").json()["credits"] == FREE_PLAN_CREDITS + 100


def test_add_credits_refuses_a_bad_amount_with_400_and_adds_nothing(
    admin: ApiClient, make_client: ClientFactory
) -> None:
    user = uuid.uuid4()
    make_client(user).get("/api/credits/")

    for body in ({"amount": "5"}, {"amount": 0}, {"amount": 1.5}, {}):
        response = admin.post(f"/api/users/{user}/add_credits/", json=body)
        assert response.status_code == 400, body
        refused = response.json()
        assert (refused["code"], refused["detail"]) == ("INVALID_INPUT", refused["error"])
    assert make_client(user).get("/api/credits/").json()["credits"] == FREE_PLAN_CREDITS


def test_supabase_users_lists_supabase_auths_users_for_admins(
    admin: ApiClient, fake_auth: FakeSupabaseAuth
) -> None:
    user = fake_auth.add_user("grace@example.com")

    response = admin.get("/api/users/supabase_users/")

    assert response.status_code == 200, response.text
    [listed] = response.json()
    assert (listed["id"], listed["email"]) == (str(user), "grace@example.com")
    assert {"app_metadata", "user_metadata", "created_at"} <= set(listed)


def test_transactions_list_the_callers_movements_newest_first_and_sum_them_up(
    admin: ApiClient, client: ApiClient, user_id: uuid.UUID
) -> None:
    top_up(admin, client, user_id, 25)

    response = client.get("/api/credits/transactions/")

    assert response.status_code == 200, response.text
    added, granted = response.json()
    assert added["username"] == str(user_id)
    assert (added["amount"], added["balance_after"]) == (25, FREE_PLAN_CREDITS + 25)
    assert {"id", "description", "endpoint", "created_at"} <= set(added)
    assert granted["amount"] == FREE_PLAN_CREDITS
    assert client.get("/api/credits/transactions/summary/").json() == {
        "total_added": FREE_PLAN_CREDITS + 25,
        "total_used": 0,
        "current_balance": FREE_PLAN_CREDITS + 25,
    }


def test_rates_list_in_credit_usage_rate_fields(client: ApiClient, db: Database) -> None:
    add_rate(db, "/api/resource/", 1)

    response = client.get("/api/credits/rates/")

    assert response.status_code == 200, response.text
    rates = {rate["endpoint_path"]: rate for rate in response.json()}
    assert set(rates) == {"agent:*", "workflow:*", "agent:echo", "/api/resource/"}
    resource = rates["/api/resource/"]
    assert (resource["credits_per_request"], resource["is_active"]) == (1, True)
    assert (resource["description"], type(resource["id"])) == ("Standard API request", int)


def test_arrays_are_bounded_by_limit_and_offset_with_a_link_to_the_next_page(
    admin: ApiClient, client: ApiClient, user_id: uuid.UUID
) -> None:
    top_up(admin, client, user_id, 25)

    first = client.get("/api/credits/transactions/?limit=1")
    second = client.get("/api/credits/transactions/?limit=1&offset=1")

    assert [t["amount"] for t in first.json()] == [25]
    assert 'rel="next"' in first.headers["Link"]
    assert "offset=1" in first.headers["Link"]
    assert [t["amount"] for t in second.json()] == [FREE_PLAN_CREDITS]
    assert client.get("/api/credits/transactions/?limit=1001").status_code == 400


def test_the_native_paths_without_the_slash_keep_their_shapes(client: ApiClient) -> None:
    assert set(client.get("/api/credits/rates").json()) == {"rates"}
    assert set(client.get("/api/credits/transactions").json()) == {"transactions", "next_cursor"}
    assert isinstance(client.get("/api/credits/transactions/").json(), list)
