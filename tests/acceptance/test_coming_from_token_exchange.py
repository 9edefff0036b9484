"""Seed 002 (token exchange), called as its document writes it: `POST /api/auth/exchange-token`
with the Supabase token in `authorization`, `{backend_token, user_id, tenant_id}` back, the backend
token carrying `user_id`, `tenant_id`, `role`, `email`, `exp`; and the user checked with Supabase
Auth (`GET /auth/v1/user`), so a signed-out, deleted or banned user cannot exchange."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests

from conveyor.auth.tenancy import grant_admin
from conveyor.db import Database, sql_connection
from tests.fake_supabase_auth import FakeSupabaseAuth
from tests.support import API_SECRET, ApiClient, LiveServer, token_for

USES_FAKE_AUTH = True
SEVEN_DAYS = 7 * 24 * 3600
EXCHANGE = "/api/auth/exchange-token"

ClientFactory = Callable[..., ApiClient]


def exchange(server: LiveServer, authorization: str, path: str = EXCHANGE) -> requests.Response:
    """The call the document's frontend makes: the token in the `authorization` header, no body."""
    return requests.post(server.url + path, headers={"authorization": authorization}, timeout=10)


def backend_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token, API_SECRET, algorithms=["HS256"], audience="authenticated"
    )
    return claims


@pytest.fixture
def signed_in(fake_auth: FakeSupabaseAuth) -> tuple[uuid.UUID, str]:
    """A Supabase user and the access token of their session."""
    user = fake_auth.add_user("ada@example.com")
    return user, fake_auth.session_for(user)


@pytest.mark.parametrize("path", [EXCHANGE, EXCHANGE + "/"])
def test_the_documented_exchange_returns_the_documented_fields_and_claims(
    live_server: LiveServer, signed_in: tuple[uuid.UUID, str], path: str
) -> None:
    user, token = signed_in

    response = exchange(live_server, f"Bearer {token}", path)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == str(user)
    assert uuid.UUID(body["tenant_id"])
    claims = backend_claims(body["backend_token"])
    assert claims["user_id"] == str(user)
    assert claims["tenant_id"] == body["tenant_id"]
    assert claims["role"] == "user"
    assert claims["email"] == "ada@example.com"
    assert abs(claims["exp"] - (time.time() + SEVEN_DAYS)) < 60


def test_the_bare_token_without_bearer_is_accepted_as_the_document_strips_it(
    live_server: LiveServer, signed_in: tuple[uuid.UUID, str]
) -> None:
    user, token = signed_in
    response = exchange(live_server, token)
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == str(user)


def test_the_backend_token_is_accepted_by_the_rest_of_the_api(
    live_server: LiveServer, make_client: ClientFactory, signed_in: tuple[uuid.UUID, str]
) -> None:
    backend_token = exchange(live_server, f"Bearer {signed_in[1]}").json()["backend_token"]
    backend = make_client(token=backend_token)
    assert backend.get("/api/runs").status_code == 200
    assert backend.get("/api/v1/tokens").json()["user_id"] == str(signed_in[0])


def test_an_admin_gets_role_admin(
    live_server: LiveServer, db: Database, signed_in: tuple[uuid.UUID, str]
) -> None:
    grant_admin(db, signed_in[0])
    body = exchange(live_server, f"Bearer {signed_in[1]}").json()
    assert backend_claims(body["backend_token"])["role"] == "admin"


def test_the_user_is_checked_with_supabase_using_the_callers_token(
    live_server: LiveServer, fake_auth: FakeSupabaseAuth, signed_in: tuple[uuid.UUID, str]
) -> None:
    exchange(live_server, f"Bearer {signed_in[1]}")
    assert ("GET", "/auth/v1/user") in fake_auth.requests


def refused(response: requests.Response) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == "SUPABASE_USER_REJECTED"
    assert body["detail"] == body["error"]


def test_a_signed_out_user_cannot_exchange(
    live_server: LiveServer, make_client: ClientFactory, signed_in: tuple[uuid.UUID, str]
) -> None:
    token = signed_in[1]
    assert make_client(token=token).post("/api/v1/auth/signout").status_code == 200
    refused(exchange(live_server, f"Bearer {token}"))


def test_a_deleted_user_cannot_exchange(
    live_server: LiveServer, fake_auth: FakeSupabaseAuth, signed_in: tuple[uuid.UUID, str]
) -> None:
    fake_auth.delete_user(signed_in[0])
    refused(exchange(live_server, f"Bearer {signed_in[1]}"))


def test_a_banned_user_cannot_exchange_even_with_a_live_session(
    live_server: LiveServer, fake_auth: FakeSupabaseAuth, signed_in: tuple[uuid.UUID, str]
) -> None:
    fake_auth.ban(signed_in[0], keep_sessions=True)
    refused(exchange(live_server, f"Bearer {signed_in[1]}"))


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, "bad_jwt"), (403, "session_not_found"), (404, "user_not_found")],
)
def test_any_refusal_from_supabase_is_a_401_and_is_audited(
    live_server: LiveServer,
    fake_auth: FakeSupabaseAuth,
    signed_in: tuple[uuid.UUID, str],
    database_url: str,
    status: int,
    code: str,
) -> None:
    fake_auth.user_answer = (status, code, "User not found")

    refused(exchange(live_server, f"Bearer {signed_in[1]}"))

    with sql_connection(database_url) as conn:
        rows = conn.execute(
            "select outcome, details ->> 'code' from audit_logs where action = 'auth.exchange'"
        ).fetchall()
    assert rows == [("failure", "SUPABASE_USER_REJECTED")]


def test_a_well_signed_token_of_a_user_supabase_does_not_know_is_refused(
    live_server: LiveServer,
) -> None:
    # The signature verifies, but Supabase Auth knows neither the user nor the session.
    refused(exchange(live_server, f"Bearer {token_for(uuid.uuid4())}"))


def test_a_malformed_token_is_401_invalid_token_with_detail(live_server: LiveServer) -> None:
    response = exchange(live_server, "Bearer not-a-jwt")
    assert response.status_code == 401
    body = response.json()
    assert (body["code"], body["detail"]) == ("INVALID_TOKEN", body["error"])


def test_supabase_down_is_503_with_retry_after_not_a_refusal(
    live_server: LiveServer, fake_auth: FakeSupabaseAuth, signed_in: tuple[uuid.UUID, str]
) -> None:
    fake_auth.down = True
    response = exchange(live_server, f"Bearer {signed_in[1]}")
    assert response.status_code == 503
    assert response.json()["code"] == "SERVICE_UNAVAILABLE"
    assert response.headers["Retry-After"]
