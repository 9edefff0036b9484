"""Supabase-shaped tokens verify; each way a token can be wrong has its own answer."""

from __future__ import annotations

import uuid

import jwt
import pytest

from conveyor.auth import bearer_token, mint_token, verify_token
from conveyor.errors import InvalidToken, TokenExpired, Unauthorized

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"


def test_minted_token_verifies_to_its_user() -> None:
    user = uuid.uuid4()
    principal = verify_token(
        mint_token(user, secret=SECRET, email="a@b.c"), secret=SECRET, audience="authenticated"
    )
    assert principal.user_id == user
    assert principal.email == "a@b.c"
    assert principal.rls_claims() == {"sub": str(user), "role": "authenticated", "email": "a@b.c"}


def test_expired_token_raises_token_expired() -> None:
    token = mint_token(uuid.uuid4(), secret=SECRET, ttl_seconds=-60)
    with pytest.raises(TokenExpired):
        verify_token(token, secret=SECRET, audience="authenticated", leeway=0)


def test_unsigned_alg_none_token_is_invalid() -> None:
    token = jwt.encode(
        {"sub": str(uuid.uuid4()), "aud": "authenticated", "exp": 9_999_999_999},
        key=None,
        algorithm="none",
    )
    with pytest.raises(InvalidToken):
        verify_token(token, secret=SECRET, audience="authenticated")


def test_token_without_sub_is_invalid() -> None:
    token = jwt.encode({"aud": "authenticated", "exp": 9_999_999_999}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="sub"):
        verify_token(token, secret=SECRET, audience="authenticated")


def test_sub_that_is_not_a_uuid_is_invalid() -> None:
    token = jwt.encode(
        {"sub": "admin", "aud": "authenticated", "exp": 9_999_999_999}, SECRET, algorithm="HS256"
    )
    with pytest.raises(InvalidToken, match="UUID"):
        verify_token(token, secret=SECRET, audience="authenticated")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Token abc"])
def test_missing_or_malformed_bearer_header_is_unauthorized(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        bearer_token(header)


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"
