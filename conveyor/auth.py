"""Identity: verify Supabase access tokens (HS256 for now) and mint development tokens."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import jwt
from pydantic import BaseModel, ConfigDict

from conveyor.errors import InvalidToken, TokenExpired, Unauthorized

ALGORITHMS = ["HS256"]
DEV_TOKEN_TTL_SECONDS = 24 * 3600


class Principal(BaseModel):
    """Who is calling, taken from a verified token."""

    model_config = ConfigDict(frozen=True)

    user_id: UUID
    email: str | None = None
    role: str = "authenticated"
    claims: dict[str, Any]

    def rls_claims(self) -> dict[str, Any]:
        """The claims Postgres sees as `request.jwt.claims`, as PostgREST would set them."""
        return {"sub": str(self.user_id), "role": self.role, "email": self.email}


def bearer_token(header: str | None) -> str:
    """The token in an `Authorization: Bearer ...` header, or Unauthorized saying what to send."""
    if not header:
        raise Unauthorized("Missing Authorization header; send `Authorization: Bearer <token>`.")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be `Bearer <token>` with a non-empty token.")
    return token.strip()


def verify_token(token: str, *, secret: str, audience: str, leeway: int = 10) -> Principal:
    """Verify signature, expiry and audience; raise TokenExpired or InvalidToken with the reason."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=ALGORITHMS,
            audience=audience,
            leeway=leeway,
            options={"require": ["exp", "sub", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpired() from exc
    except jwt.InvalidAudienceError as exc:
        raise InvalidToken(f"The token's audience is not {audience!r}.") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"The token has no {exc.claim!r} claim.") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidToken("The token's signature does not match this project's secret.") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise InvalidToken(f"The token must be signed with {', '.join(ALGORITHMS)}.") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"The token could not be read: {exc}.") from exc
    try:
        user_id = UUID(str(claims["sub"]))
    except ValueError as exc:
        raise InvalidToken("The token's `sub` claim is not a user id (UUID).") from exc
    return Principal(
        user_id=user_id,
        email=claims.get("email"),
        role=str(claims.get("role", "authenticated")),
        claims=claims,
    )


def mint_token(
    user_id: UUID,
    *,
    secret: str,
    audience: str = "authenticated",
    email: str | None = None,
    ttl_seconds: int = DEV_TOKEN_TTL_SECONDS,
) -> str:
    """An HS256 access token shaped like the ones Supabase Auth issues."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "aud": audience,
        "role": "authenticated",
        "iat": now,
        "exp": now + ttl_seconds,
        "iss": "conveyor-dev",
        "app_metadata": {"provider": "conveyor-dev"},
    }
    if email:
        claims["email"] = email
    return jwt.encode(claims, secret, algorithm="HS256")
