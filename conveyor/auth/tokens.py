"""Identity: verify Supabase access tokens (HS256 secret or ES256/RS256 via JWKS), backend and
service tokens (HS256 with API_JWT_SECRET), and mint development, backend and service tokens."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, Literal
from uuid import UUID

import jwt
from pydantic import BaseModel, ConfigDict

from conveyor.auth.jwks import ALGORITHM_FOR_KEY_TYPE, JwksCache
from conveyor.errors import Forbidden, InvalidToken, TokenExpired, Unauthorized

# Tokens Conveyor signs itself carry this issuer; everything else must come from Supabase.
CONVEYOR_ISSUER = "conveyor"
SERVICE_AUDIENCE = "conveyor-service"
DEV_TOKEN_TTL_SECONDS = 24 * 3600
SERVICE_TOKEN_TTL_SECONDS = 365 * 24 * 3600

TokenKind = Literal["supabase", "backend", "service"]
# The application roles a backend token names in its `role` claim (seed 002).
BackendRole = Literal["user", "admin"]
BACKEND_ROLES = frozenset({"user", "admin"})


class Principal(BaseModel):
    """Who is calling, taken from a verified token."""

    model_config = ConfigDict(frozen=True)

    kind: TokenKind
    user_id: UUID | None
    subject: str
    email: str | None = None
    role: str
    is_admin: bool = False
    tenant_id: UUID | None = None
    scopes: frozenset[str] = frozenset()
    claims: dict[str, Any]

    @property
    def is_service(self) -> bool:
        """A backend calling with a service token, not a person."""
        return self.kind == "service"

    def require_user(self) -> UUID:
        """The user id, or Forbidden for a service token on a user endpoint."""
        if self.user_id is None:
            raise Forbidden("This endpoint acts for a user; call it with a user's access token.")
        return self.user_id

    def require_admin(self) -> None:
        """Forbidden unless the caller is an admin."""
        if not self.is_admin:
            raise Forbidden("This endpoint is for admins only.")

    def require_scope(self, scope: str) -> None:
        """Forbidden unless a service token grants scope."""
        if scope not in self.scopes:
            raise Forbidden(f"This endpoint needs a service token with scope {scope!r}.")

    def rls_claims(self) -> dict[str, Any]:
        """The claims Postgres sees as `request.jwt.claims`, as PostgREST would set them."""
        return {
            "sub": str(self.user_id) if self.user_id else None,
            "role": "authenticated",
            "email": self.email,
            "app_metadata": {"role": "admin"} if self.is_admin else {},
        }


def bearer_token(header: str | None) -> str:
    """The token in an `Authorization: Bearer ...` header, or Unauthorized saying what to send."""
    if not header:
        raise Unauthorized("Missing Authorization header; send `Authorization: Bearer <token>`.")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be `Bearer <token>` with a non-empty token.")
    return token.strip()


# Verified tokens remembered per process (see TokenVerifier.verify), and for how long at most.
VERIFIED_CACHE_SIZE = 4096
VERIFIED_CACHE_SECONDS = 60


class TokenVerifier:
    """Verifies every kind of token Conveyor accepts, with algorithms allow-listed per key."""

    def __init__(
        self,
        *,
        supabase_secret: str | None,
        api_secret: str,
        jwks: JwksCache | None,
        audience: str = "authenticated",
        issuer: str | None = None,
        leeway: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._supabase_secret = supabase_secret
        self._api_secret = api_secret
        self._jwks = jwks
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._clock = clock
        self._verified = functools.lru_cache(maxsize=VERIFIED_CACHE_SIZE)(self._verify_fresh)

    def verify(self, token: str) -> Principal:
        """A Principal for a valid token; TokenExpired or InvalidToken saying what is wrong."""
        # A client sends the same token for its whole life (an hour, for Supabase), and checking
        # its signature was a seventh of the web's CPU under load (bench/load.py). A token that
        # verified is remembered by its exact text (signature included) for the rest of the
        # current minute, so a key withdrawn from the JWKS stops being honoured within a minute;
        # its expiry is checked on every use. Failures are never remembered.
        now = self._clock()
        principal, good_until = self._verified(token, int(now // VERIFIED_CACHE_SECONDS))
        if now >= good_until:
            raise TokenExpired()
        return principal

    def _verify_fresh(self, token: str, _minute: int) -> tuple[Principal, float]:
        """Verify the token; the Principal and the time it stops being valid (exp + leeway)."""
        principal = self._verify_token(token)
        return principal, float(principal.claims["exp"]) + self._leeway

    def _verify_token(self, token: str) -> Principal:
        try:
            # Header and claims from one parse; the signature is checked below with the right key.
            parsed = jwt.decode_complete(token, options={"verify_signature": False})
            header, unverified = parsed["header"], parsed["payload"]
        except jwt.PyJWTError as exc:
            raise InvalidToken("The token is not a well-formed JWT.") from exc
        alg = header.get("alg")
        if unverified.get("iss") == CONVEYOR_ISSUER:
            return self._verify_conveyor(token, alg, unverified)
        key, algorithm = self._supabase_key(alg, header)
        claims = self._decode(token, key, algorithm, self._audience, self._issuer)
        return user_principal("supabase", claims)

    def _supabase_key(self, alg: Any, header: dict[str, Any]) -> tuple[Any, str]:
        if alg == "HS256":
            if self._supabase_secret is None:
                raise InvalidToken("HS256 tokens are not accepted: no Supabase JWT secret is set.")
            return self._supabase_secret, "HS256"
        if alg in ALGORITHM_FOR_KEY_TYPE.values():
            if self._jwks is None:
                raise InvalidToken(
                    f"{alg} tokens are not accepted: no Supabase JWKS is configured."
                )
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise InvalidToken(f"The {alg} token has no `kid` header.")
            jwk = self._jwks.get(kid)
            if jwk is None:
                raise InvalidToken(f"The token is signed with an unknown key (kid {kid!r}).")
            if ALGORITHM_FOR_KEY_TYPE.get(str(jwk.key_type)) != alg:
                raise InvalidToken(f"Key {kid!r} is a {jwk.key_type} key; it cannot verify {alg}.")
            return jwk.key, alg
        raise InvalidToken(
            f"Tokens signed with {alg!r} are not accepted; use HS256, ES256 or RS256."
        )

    def _verify_conveyor(self, token: str, alg: Any, unverified: dict[str, Any]) -> Principal:
        if alg != "HS256":
            raise InvalidToken("Conveyor-issued tokens are HS256.")
        if unverified.get("role") == "service":
            claims = self._decode(
                token, self._api_secret, "HS256", SERVICE_AUDIENCE, CONVEYOR_ISSUER
            )
            scopes = claims.get("scopes", [])
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                raise InvalidToken("The service token's `scopes` must be a list of strings.")
            return Principal(
                kind="service",
                user_id=None,
                subject=str(claims["sub"]),
                role="service",
                scopes=frozenset(scopes),
                claims=claims,
            )
        claims = self._decode(token, self._api_secret, "HS256", self._audience, CONVEYOR_ISSUER)
        return user_principal("backend", claims)

    def _decode(
        self, token: str, key: Any, algorithm: str, audience: str, issuer: str | None
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=audience,
                issuer=issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired() from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("The token is not valid yet (nbf/iat in the future).") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidToken(f"The token's audience is not {audience!r}.") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken(f"The token's issuer is not {issuer!r}.") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"The token has no {exc.claim!r} claim.") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken("The token's signature does not verify.") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"The token could not be verified: {exc}.") from exc
        return claims


def user_principal(kind: TokenKind, claims: dict[str, Any]) -> Principal:
    """A user's Principal from verified claims; the `sub` must be a user id."""
    try:
        user_id = UUID(str(claims["sub"]))
    except ValueError as exc:
        raise InvalidToken("The token's `sub` claim is not a user id (UUID).") from exc
    role = str(claims.get("role", "authenticated"))
    # Backend tokens carry seed 002's application role (`user` or `admin`) in `role`; the
    # database role they act as is still `authenticated`.
    if kind == "backend" and role in BACKEND_ROLES:
        role = "authenticated"
    if role != "authenticated":
        raise InvalidToken(f"Tokens with role {role!r} cannot call this API; sign the user in.")
    app_metadata = claims.get("app_metadata")
    is_admin = isinstance(app_metadata, dict) and app_metadata.get("role") == "admin"
    tenant = claims.get("tenant_id")
    try:
        tenant_id = UUID(str(tenant)) if tenant else None
    except ValueError as exc:
        raise InvalidToken("The token's `tenant_id` is not a UUID.") from exc
    return Principal(
        kind=kind,
        user_id=user_id,
        subject=str(user_id),
        email=claims.get("email"),
        role=role,
        is_admin=is_admin,
        tenant_id=tenant_id,
        claims=claims,
    )


def mint_token(
    user_id: UUID,
    *,
    secret: str,
    audience: str = "authenticated",
    email: str | None = None,
    ttl_seconds: int = DEV_TOKEN_TTL_SECONDS,
    admin: bool = False,
) -> str:
    """An HS256 access token shaped like the ones Supabase Auth issues (for development)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "aud": audience,
        "role": "authenticated",
        "iat": now,
        "exp": now + ttl_seconds,
        "iss": "conveyor-dev",
        "app_metadata": {"provider": "conveyor-dev", **({"role": "admin"} if admin else {})},
    }
    if email:
        claims["email"] = email
    return jwt.encode(claims, secret, algorithm="HS256")


def mint_backend_token(
    principal: Principal,
    tenant_id: UUID,
    *,
    secret: str,
    ttl_seconds: int,
    role: BackendRole | None = None,
) -> str:
    """The token /api/auth/exchange-token returns: the same user, signed by Conveyor, with seed
    002's claims (`user_id`, `tenant_id`, `role`, `email`, `exp`) beside the standard ones."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": principal.subject,
        "aud": "authenticated",
        "iss": CONVEYOR_ISSUER,
        "iat": now,
        "exp": now + ttl_seconds,
        "user_id": principal.subject,
        "tenant_id": str(tenant_id),
        "role": role or ("admin" if principal.is_admin else "user"),
        "email": principal.email,
        "app_metadata": {"role": "admin"} if principal.is_admin else {},
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def mint_service_token(
    name: str, scopes: list[str], *, secret: str, ttl_seconds: int = SERVICE_TOKEN_TTL_SECONDS
) -> str:
    """A token for another backend, limited to scopes (e.g. `usage:write`)."""
    now = int(time.time())
    claims = {
        "sub": f"service:{name}",
        "aud": SERVICE_AUDIENCE,
        "role": "service",
        "iss": CONVEYOR_ISSUER,
        "iat": now,
        "exp": now + ttl_seconds,
        "scopes": sorted(set(scopes)),
    }
    return jwt.encode(claims, secret, algorithm="HS256")
