"""Supabase's published signing keys (JWKS), cached, refreshed on rotation, never hammered."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import jwt
import structlog

from conveyor.errors import ServiceUnavailable

log = structlog.get_logger(__name__)

FETCH_TIMEOUT_SECONDS = 3.0
MAX_JWKS_BYTES = 256 * 1024
# Only asymmetric keys come from JWKS; each key type admits exactly one algorithm.
ALGORITHM_FOR_KEY_TYPE = {"EC": "ES256", "RSA": "RS256"}


class JwksCache:
    """Keys by `kid`: refetched after `ttl`, and for an unknown kid at most once per min_refetch."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float,
        min_refetch: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"JWKS URL must be http(s): {url!r}")
        self.url = url
        self._ttl = ttl
        self._min_refetch = min_refetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = threading.Lock()
        self.fetches = 0

    def get(self, kid: str) -> jwt.PyJWK | None:
        """The key with this id, or None if the issuer does not (or no longer) publish it."""
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self._ttl:
                self._refresh_if_allowed(now)
            key = self._keys.get(kid)
            if key is None:
                # Key rotation: a token signed with a key newer than our copy. Rate-limited, so
                # a flood of made-up kids costs the issuer one request per min_refetch.
                self._refresh_if_allowed(now)
                key = self._keys.get(kid)
            if key is None and self._fetched_at is None:
                raise ServiceUnavailable("The signing keys could not be fetched; retry shortly.")
            return key

    def _refresh_if_allowed(self, now: float) -> None:
        if self._attempted_at is not None and now - self._attempted_at < self._min_refetch:
            return
        self._attempted_at = now
        try:
            self._keys = parse_jwks(fetch_json(self.url))
            self._fetched_at = now
            self.fetches += 1
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            # Keep serving the keys we have: a JWKS outage must not log every user out.
            log.warning("jwks_fetch_failed", url=self.url, error=str(exc))


def fetch_json(url: str) -> Any:
    """GET url and parse its JSON body, with a timeout and a size cap."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:  # noqa: S310
        return json.loads(response.read(MAX_JWKS_BYTES + 1)[:MAX_JWKS_BYTES])


def parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """The usable asymmetric keys of a JWKS document, by kid."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no `keys` list)")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") not in ALGORITHM_FOR_KEY_TYPE:
            continue
        if not entry.get("kid"):
            continue
        try:
            key = jwt.PyJWK.from_dict(entry)
        except jwt.PyJWTError as exc:
            log.warning("jwks_key_skipped", kid=entry.get("kid"), error=str(exc))
            continue
        keys[str(entry["kid"])] = key
    return keys
