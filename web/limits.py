"""Requests without valid credentials are rate-limited per client address
(conveyor.auth.rate_limit).

Counted: anything not authenticated by the auth hook and carrying no token that verifies (health,
the dashboard and its assets, token exchange, /metrics without its token, unknown paths), and every
401, so guessing tokens is limited too. Not counted: authenticated requests and the Stripe webhook,
which Stripe signs and retries. Over the limit: 429 `RATE_LIMITED` with Retry-After."""

from __future__ import annotations

import hmac
import math
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import redis
from flask import Flask, Response, current_app, g, request

from conveyor.auth.rate_limit import RateLimiter
from conveyor.auth.tokens import TokenVerifier, bearer_token
from conveyor.errors import ConveyorError, RateLimited
from conveyor.settings import Settings
from web.auth import client_ip
from web.errors import handle_conveyor_error

EXEMPT_PATHS = frozenset({"/api/payments/webhook", "/livez"})
REDIS_TIMEOUT_SECONDS = 0.5


def has_valid_credentials() -> bool:
    """A bearer token (or a websocket's `?token=`) that verifies, or the metrics token."""
    settings: Settings = current_app.extensions["conveyor.settings"]
    header = request.headers.get("Authorization")
    if settings.metrics_token is not None and header:
        sent = header.removeprefix("Bearer ").strip().encode()
        if hmac.compare_digest(sent, settings.metrics_token.get_secret_value().encode()):
            return True
    verifier: TokenVerifier = current_app.extensions["conveyor.verifier"]
    try:
        verifier.verify(request.args.get("token") or bearer_token(header))
    except ConveyorError:
        return False
    return True


def bucket(parsed: IPv4Address | IPv6Address | None, address: str) -> str:
    """Whose allowance a request uses: an IPv4 address, or an IPv6 /64, the block one subscriber
    usually holds (counted per address, a /64 would have 2**64 allowances)."""
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is None:
        return str(ip_network(f"{parsed}/64", strict=False))
    return address


def anonymous_caller() -> str | None:
    """Whose allowance a request without credentials uses (`anon:<address or /64>`); None for an
    address in RATE_LIMIT_EXEMPT_NETWORKS."""
    settings: Settings = current_app.extensions["conveyor.settings"]
    address = client_ip() or "unknown"
    try:
        parsed = ip_address(address)
    except ValueError:
        parsed = None
    if parsed is not None and any(parsed in net for net in settings.rate_limit_exempt_networks):
        return None
    return f"anon:{bucket(parsed, address)}"


def over_limit() -> RateLimited | None:
    """Count this request against its address; the error to answer if that was one too many."""
    g.conveyor_rate_counted = True
    caller = anonymous_caller()
    if caller is None:
        return None
    address = client_ip() or "unknown"
    limiter: RateLimiter = current_app.extensions["conveyor.rate_limiter"]
    wait = limiter.hit(caller)
    if wait <= 0:
        return None
    seconds = math.ceil(wait)
    return RateLimited(
        f"Too many requests without valid credentials from {address}; retry in {seconds} s, "
        "or send a valid bearer token.",
        retry_after=seconds,
    )


def limit_unauthenticated() -> None:
    """Before the view (after the auth hook): refuse an unauthenticated caller over its limit."""
    if request.path in EXEMPT_PATHS or "principal" in g or has_valid_credentials():
        return
    refusal = over_limit()
    if refusal is not None:
        raise refusal


def limit_refused_credentials(response: Response) -> Response:
    """After the view: a 401 not yet counted (the auth hook refused the token) counts now."""
    if (
        response.status_code != 401
        or g.get("conveyor_rate_counted", False)
        or request.path in EXEMPT_PATHS
    ):
        return response
    refusal = over_limit()
    if refusal is None:
        return response
    refused, status = handle_conveyor_error(refusal)
    refused.status_code = status
    return refused


def init_app(app: Flask, settings: Settings) -> None:
    """Install the limit (after the auth hook, which it relies on), unless it is turned off."""
    if settings.unauthenticated_rate_limit == 0:
        return
    assert settings.redis_url is not None
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    app.extensions["conveyor.rate_limiter"] = RateLimiter(
        client,
        rate=settings.unauthenticated_rate_limit,
        burst=settings.unauthenticated_rate_burst,
    )
    app.before_request(limit_unauthenticated)
    app.after_request(limit_refused_credentials)
