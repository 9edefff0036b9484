"""Without SUPABASE_URL the Supabase Auth proxies answer 503 AUTH_NOT_CONFIGURED (with FastAPI's
`detail`); the token exchange still works on the token's signature alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support import ApiClient

ClientFactory = Callable[..., ApiClient]
CREDENTIALS = {"email": "ada@example.com", "password": "correct horse"}


@pytest.mark.parametrize("path", ["/api/v1/auth/signup", "/api/v1/auth/signin"])
def test_signup_and_signin_answer_503_auth_not_configured(anonymous: ApiClient, path: str) -> None:
    response = anonymous.post(path, json=CREDENTIALS)
    assert response.status_code == 503
    body = response.json()
    assert (body["code"], body["detail"]) == ("AUTH_NOT_CONFIGURED", body["error"])
    assert "SUPABASE_URL" in body["error"]


def test_signout_answers_503_auth_not_configured(make_client: ClientFactory) -> None:
    response = make_client().post("/api/v1/auth/signout")
    assert response.status_code == 503
    assert response.json()["code"] == "AUTH_NOT_CONFIGURED"


def test_the_exchange_needs_no_supabase_auth(make_client: ClientFactory) -> None:
    assert make_client().post("/api/auth/exchange-token").status_code == 200
