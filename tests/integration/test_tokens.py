"""Token verification as Supabase issues tokens today: HS256, ES256 and RS256 from a JWKS served
over real HTTP, key rotation without restart, and each way a token can be wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conveyor.auth.jwks import JwksCache
from conveyor.auth.tokens import (
    TokenVerifier,
    bearer_token,
    mint_backend_token,
    mint_service_token,
    mint_token,
    user_principal,
)
from conveyor.errors import InvalidToken, ServiceUnavailable, TokenExpired, Unauthorized
from conveyor.settings import Settings
from web import build_verifier

HS_SECRET = "supabase-legacy-jwt-secret-of-at-least-32-bytes"
API_SECRET = "conveyor-api-secret-of-at-least-32-bytes-long"
ISSUER = "https://project.supabase.co/auth/v1"


class JwksServer:
    """A loopback HTTP server publishing a JWKS document the test can change."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/auth/v1/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def publish(self, *keys: dict[str, Any]) -> None:
        self.document = {"keys": list(keys)}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def public_jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(
        jwt.algorithms.get_default_algorithms()[alg].to_jwk(private_key.public_key())
    )
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": str(uuid.uuid4()),
        "aud": "authenticated",
        "role": "authenticated",
        "iss": ISSUER,
        "iat": now,
        "exp": now + 3600,
        "email": "user@example.com",
    }
    return {**base, **overrides}


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def verifier(jwks_server: JwksServer, ec_key: Any, rsa_key: Any) -> TokenVerifier:
    jwks_server.publish(public_jwk(ec_key, "ec-1", "ES256"), public_jwk(rsa_key, "rsa-1", "RS256"))
    return TokenVerifier(
        supabase_secret=HS_SECRET,
        api_secret=API_SECRET,
        jwks=JwksCache(jwks_server.url, ttl=600, min_refetch=0),
        issuer=ISSUER,
        leeway=0,
    )


def test_hs256_token_verifies(verifier: TokenVerifier) -> None:
    token_claims = claims()
    principal = verifier.verify(jwt.encode(token_claims, HS_SECRET, algorithm="HS256"))
    assert str(principal.user_id) == token_claims["sub"]
    assert principal.kind == "supabase"
    assert principal.email == "user@example.com"


def test_es256_token_verifies_with_the_published_key(verifier: TokenVerifier, ec_key: Any) -> None:
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert verifier.verify(token).role == "authenticated"


def test_rs256_token_verifies_with_the_published_key(verifier: TokenVerifier, rsa_key: Any) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert verifier.verify(token).kind == "supabase"


def test_production_without_an_hs256_secret_verifies_with_supabase_urls_jwks(
    jwks_server: JwksServer, ec_key: Any, tmp_path: Path
) -> None:
    jwks_server.publish(public_jwk(ec_key, "ec-1", "ES256"))
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment="production",
        database_url="postgresql://127.0.0.1/unused",
        redis_url="redis://127.0.0.1:6379/0",
        api_jwt_secret=API_SECRET,
        supabase_jwt_secret=None,
        supabase_url=jwks_server.url.removesuffix("/auth/v1/.well-known/jwks.json"),
        data_dir=tmp_path,
    )
    verifier = build_verifier(settings)
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert verifier.verify(token).kind == "supabase"
    with pytest.raises(InvalidToken):
        verifier.verify(jwt.encode(claims(), HS_SECRET, algorithm="HS256"))


def test_rotated_key_verifies_without_restart(
    verifier: TokenVerifier, jwks_server: JwksServer, ec_key: Any
) -> None:
    verifier.verify(jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"}))
    new_key = ec.generate_private_key(ec.SECP256R1())
    jwks_server.publish(public_jwk(ec_key, "ec-1", "ES256"), public_jwk(new_key, "ec-2", "ES256"))

    token = jwt.encode(claims(), new_key, algorithm="ES256", headers={"kid": "ec-2"})
    assert verifier.verify(token).kind == "supabase"


def test_unknown_kids_fetch_the_jwks_at_most_once_per_interval(
    jwks_server: JwksServer, ec_key: Any
) -> None:
    """A flood of made-up kids cannot hammer Supabase's JWKS endpoint."""
    now = [1000.0]
    jwks_server.publish(public_jwk(ec_key, "ec-1", "ES256"))
    cache = JwksCache(jwks_server.url, ttl=600, min_refetch=30, clock=lambda: now[0])
    for i in range(50):
        assert cache.get(f"bogus-{i}") is None
    assert jwks_server.requests == 1
    now[0] += 31
    assert cache.get("bogus-again") is None
    assert jwks_server.requests == 2


def test_unreachable_jwks_without_cached_keys_is_service_unavailable(
    jwks_server: JwksServer,
) -> None:
    url = jwks_server.url
    jwks_server.close()
    with pytest.raises(ServiceUnavailable):
        JwksCache(url, ttl=600, min_refetch=0).get("any")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_alg_none_is_rejected(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), key=None, algorithm="none")
    with pytest.raises(InvalidToken, match="not accepted"):
        verifier.verify(token)


def test_hs256_signed_with_the_rsa_public_key_is_rejected(
    verifier: TokenVerifier, rsa_key: Any
) -> None:
    """The classic HS/RS confusion: the public key used as an HMAC secret."""
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims()).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken, match="signature"):
        verifier.verify(f"{signing_input}.{b64(signature)}")


def test_rs256_header_with_an_ec_key_id_is_rejected(verifier: TokenVerifier, ec_key: Any) -> None:
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "rsa-1"})
    with pytest.raises(InvalidToken):
        verifier.verify(token)


def test_expired_token_is_token_expired(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 60), HS_SECRET, algorithm="HS256")
    with pytest.raises(TokenExpired):
        verifier.verify(token)


def test_a_token_verified_earlier_is_still_refused_once_it_expires() -> None:
    now = [time.time()]
    verifier = TokenVerifier(
        supabase_secret=HS_SECRET, api_secret=API_SECRET, jwks=None, issuer=ISSUER, leeway=0,
        clock=lambda: now[0],
    )  # fmt: skip
    token = jwt.encode(claims(exp=int(now[0]) + 30), HS_SECRET, algorithm="HS256")
    verifier.verify(token)

    now[0] += 31
    with pytest.raises(TokenExpired):
        verifier.verify(token)


def test_a_withdrawn_signing_key_stops_being_honoured_within_a_minute(
    jwks_server: JwksServer, ec_key: Any
) -> None:
    now = [time.time()]
    jwks_server.publish(public_jwk(ec_key, "ec-1", "ES256"))
    verifier = TokenVerifier(
        supabase_secret=HS_SECRET,
        api_secret=API_SECRET,
        jwks=JwksCache(jwks_server.url, ttl=0, min_refetch=0),  # every lookup refetches
        issuer=ISSUER,
        leeway=0,
        clock=lambda: now[0],
    )
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    verifier.verify(token)
    jwks_server.publish()  # the key is withdrawn

    verifier.verify(token)  # remembered: verified this minute
    now[0] += 60
    with pytest.raises(InvalidToken, match="unknown key"):
        verifier.verify(token)


def test_not_yet_valid_token_is_rejected(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(nbf=int(time.time()) + 600), HS_SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="not valid yet"):
        verifier.verify(token)


def test_wrong_audience_is_rejected(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(aud="anon"), HS_SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="audience"):
        verifier.verify(token)


def test_wrong_issuer_is_rejected(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(iss="https://evil.example/auth/v1"), HS_SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="issuer"):
        verifier.verify(token)


def test_tampered_payload_is_rejected(verifier: TokenVerifier, ec_key: Any) -> None:
    header, _, signature = jwt.encode(
        claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"}
    ).split(".")
    forged = b64(json.dumps(claims(app_metadata={"role": "admin"})).encode())
    with pytest.raises(InvalidToken, match="signature"):
        verifier.verify(f"{header}.{forged}.{signature}")


def test_unknown_kid_is_rejected(verifier: TokenVerifier) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(), stranger, algorithm="ES256", headers={"kid": "nobody"})
    with pytest.raises(InvalidToken, match="unknown key"):
        verifier.verify(token)


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", "", "eyJhbGciOiJIUzI1NiJ9..."])
def test_garbage_is_rejected(verifier: TokenVerifier, garbage: str) -> None:
    with pytest.raises(InvalidToken):
        verifier.verify(garbage)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Token abc"])
def test_empty_or_malformed_bearer_is_unauthorized(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        bearer_token(header)


def test_anon_role_token_cannot_call_the_api(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(role="anon"), HS_SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="role"):
        verifier.verify(token)


def test_admin_comes_from_app_metadata(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(app_metadata={"role": "admin"}), HS_SECRET, algorithm="HS256")
    assert verifier.verify(token).is_admin


def test_backend_token_verifies_with_its_tenant(verifier: TokenVerifier) -> None:
    user = user_principal("supabase", claims())
    tenant = uuid.uuid4()
    principal = verifier.verify(mint_backend_token(user, tenant, secret=API_SECRET, ttl_seconds=60))
    assert principal.kind == "backend"
    assert principal.user_id == user.user_id
    assert principal.tenant_id == tenant


def test_backend_token_signed_with_the_supabase_secret_is_rejected(verifier: TokenVerifier) -> None:
    user = user_principal("supabase", claims())
    forged = mint_backend_token(user, uuid.uuid4(), secret=HS_SECRET, ttl_seconds=60)
    with pytest.raises(InvalidToken, match="signature"):
        verifier.verify(forged)


def test_service_token_carries_its_scopes(verifier: TokenVerifier) -> None:
    principal = verifier.verify(mint_service_token("billing", ["usage:write"], secret=API_SECRET))
    assert principal.is_service
    assert principal.user_id is None
    assert principal.scopes == frozenset({"usage:write"})
    principal.require_scope("usage:write")


def test_dev_token_verifies_as_a_supabase_hs256_token() -> None:
    verifier = TokenVerifier(supabase_secret=HS_SECRET, api_secret=API_SECRET, jwks=None)
    user = uuid.uuid4()
    assert verifier.verify(mint_token(user, secret=HS_SECRET)).user_id == user
