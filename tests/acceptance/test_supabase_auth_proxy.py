"""`/api/v1/auth/*` proxies Supabase Auth (a loopback server speaking GoTrue's API): its refusals
become clear 4xx codes with FastAPI's `detail`, its outages 503, and bad bodies 422."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from conveyor.db import Database
from tests.fake_supabase_auth import FakeSupabaseAuth
from tests.support import ApiClient

USES_FAKE_AUTH = True
SIGNUP, SIGNIN, SIGNOUT = "/api/v1/auth/signup", "/api/v1/auth/signin", "/api/v1/auth/signout"
PASSWORD = "correct horse"

ClientFactory = Callable[..., ApiClient]
FREE_PLAN_CREDITS = 100  # plans.monthly_credit_grant of free, what a new account starts with


def refused(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert (body["code"], body["detail"]) == (code, body["error"])
    return body


def test_a_wrong_password_is_401_invalid_credentials(
    anonymous: ApiClient, fake_auth: FakeSupabaseAuth
) -> None:
    fake_auth.add_user("ada@example.com", PASSWORD)
    wrong = anonymous.post(SIGNIN, json={"email": "ada@example.com", "password": "nope"})
    unknown = anonymous.post(SIGNIN, json={"email": "bob@example.com", "password": PASSWORD})
    refused(wrong, 401, "INVALID_CREDENTIALS")
    refused(unknown, 401, "INVALID_CREDENTIALS")


def test_signing_up_twice_is_409(anonymous: ApiClient) -> None:
    credentials = {"email": "ada@example.com", "password": PASSWORD}
    assert anonymous.post(SIGNUP, json=credentials).status_code == 200
    refused(anonymous.post(SIGNUP, json=credentials), 409, "USER_ALREADY_EXISTS")


def test_a_weak_password_is_400_with_supabases_reasons(anonymous: ApiClient) -> None:
    response = anonymous.post(SIGNUP, json={"email": "ada@example.com", "password": "abc"})
    assert refused(response, 400, "WEAK_PASSWORD")["details"] == {"reasons": ["length"]}


def test_with_email_confirmation_signup_has_no_session_and_signin_waits_for_it(
    anonymous: ApiClient, fake_auth: FakeSupabaseAuth, db: Database
) -> None:
    fake_auth.autoconfirm = False
    credentials = {"email": "ada@example.com", "password": PASSWORD}

    signed_up = anonymous.post(SIGNUP, json=credentials)

    assert signed_up.status_code == 200, signed_up.text
    body = signed_up.json()
    assert (body["access_token"], body["refresh_token"]) == (None, None)
    assert "confirm your email" in body["message"]
    assert body["token"] == FREE_PLAN_CREDITS  # what the account will start with
    with db.transaction() as conn:
        opened = conn.execute("select count(*) as n from user_accounts").fetchone()
    assert opened is not None
    assert opened["n"] == 0  # opened at the first sign-in, not for a made-up user
    refused(anonymous.post(SIGNIN, json=credentials), 403, "EMAIL_NOT_CONFIRMED")


def test_a_banned_user_cannot_sign_in(anonymous: ApiClient, fake_auth: FakeSupabaseAuth) -> None:
    fake_auth.ban(fake_auth.add_user("ada@example.com", PASSWORD))
    response = anonymous.post(SIGNIN, json={"email": "ada@example.com", "password": PASSWORD})
    refused(response, 403, "USER_BANNED")


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": PASSWORD},
        {"email": "ada@example.com"},
        {"email": "ada@example.com", "password": ""},
        {"email": 5, "password": PASSWORD},
    ],
)
def test_a_bad_body_is_422(anonymous: ApiClient, body: dict[str, Any]) -> None:
    response = anonymous.post(SIGNIN, json=body)
    refused_body = response.json()
    assert response.status_code == 422, response.text
    assert refused_body["code"] == "INVALID_INPUT"
    assert refused_body["detail"][0]["loc"][0] == "body"


def test_unknown_fields_are_ignored_as_fastapi_ignores_them(
    anonymous: ApiClient, fake_auth: FakeSupabaseAuth
) -> None:
    fake_auth.add_user("ada@example.com", PASSWORD)
    body = {"email": "ada@example.com", "password": PASSWORD, "remember_me": True}
    assert anonymous.post(SIGNIN, json=body).status_code == 200


def test_signing_out_again_is_fine(anonymous: ApiClient, make_client: ClientFactory) -> None:
    token = anonymous.post(SIGNUP, json={"email": "ada@example.com", "password": PASSWORD})
    session = make_client(token=token.json()["access_token"])
    assert session.post(SIGNOUT).status_code == 200
    assert session.post(SIGNOUT).status_code == 200


def test_signing_out_needs_the_supabase_token_not_a_backend_token(
    make_client: ClientFactory, fake_auth: FakeSupabaseAuth
) -> None:
    supabase_token = fake_auth.session_for(fake_auth.add_user("ada@example.com"))
    exchanged = make_client(token=supabase_token).post("/api/auth/exchange-token")
    backend = make_client(token=exchanged.json()["backend_token"])
    refused(backend.post(SIGNOUT), 403, "FORBIDDEN")
    assert len(fake_auth.sessions) == 1


def test_signing_out_without_a_token_is_401(anonymous: ApiClient) -> None:
    refused(anonymous.post(SIGNOUT), 401, "UNAUTHORIZED")


def test_supabase_down_is_503_with_retry_after(
    anonymous: ApiClient, fake_auth: FakeSupabaseAuth
) -> None:
    fake_auth.down = True
    response = anonymous.post(SIGNIN, json={"email": "ada@example.com", "password": PASSWORD})
    assert refused(response, 503, "SERVICE_UNAVAILABLE")
    assert response.headers["Retry-After"]


def test_supabase_unreachable_is_503(anonymous: ApiClient, fake_auth: FakeSupabaseAuth) -> None:
    fake_auth.close()
    response = anonymous.post(SIGNUP, json={"email": "ada@example.com", "password": PASSWORD})
    refused(response, 503, "SERVICE_UNAVAILABLE")
