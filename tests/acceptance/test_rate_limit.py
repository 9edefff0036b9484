"""Requests without valid credentials are limited per client address; authenticated callers and
the Stripe webhook are not."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import requests

from conveyor.cli.services import free_port
from tests.support import ApiClient, LiveServer, make_settings, token_for

BURST = 3
# Six a minute: one every 10 s, so nothing refills while a test runs.
SETTINGS = {
    "unauthenticated_rate_limit": 6,
    "unauthenticated_rate_burst": BURST,
    "trusted_proxy_hops": 1,
    "stripe_webhook_secret": "whsec_test_rate_limit",
}


def from_address(client: ApiClient, address: str) -> ApiClient:
    """client, seen by the app as calling from address (through the one trusted proxy)."""
    client.session.headers["X-Forwarded-For"] = address
    return client


def use_up_allowance(client: ApiClient) -> None:
    for _ in range(BURST):
        assert client.get("/api/health").status_code == 200


def test_the_request_after_the_burst_is_429_rate_limited_with_retry_after(
    anonymous: ApiClient,
) -> None:
    use_up_allowance(anonymous)

    response = anonymous.get("/api/health")

    assert response.status_code == 429
    assert response.json()["code"] == "RATE_LIMITED"
    # The next token is due 10 s after the first request of the burst (less the time it took).
    assert 1 <= int(response.headers["Retry-After"]) <= 10


def test_authenticated_requests_from_a_limited_address_are_served(
    anonymous: ApiClient, client: ApiClient
) -> None:
    use_up_allowance(anonymous)

    statuses = [client.get("/api/agents").status_code for _ in range(BURST * 2)]

    assert anonymous.get("/api/health").status_code == 429
    assert statuses == [200] * (BURST * 2)


def test_the_stripe_webhook_is_not_limited(anonymous: ApiClient) -> None:
    use_up_allowance(anonymous)

    statuses = [
        anonymous.post("/api/payments/webhook", data=b"{}", headers={"Stripe-Signature": "t=1"})
        for _ in range(BURST * 2)
    ]

    assert [r.json()["code"] for r in statuses] == ["INVALID_SIGNATURE"] * (BURST * 2)


def test_each_client_address_has_its_own_allowance(
    make_client: Callable[..., ApiClient], live_server: LiveServer
) -> None:
    first = from_address(ApiClient(live_server.url, None), "203.0.113.7")
    second = from_address(ApiClient(live_server.url, None), "203.0.113.8")
    use_up_allowance(first)

    assert first.get("/api/health").status_code == 429
    assert second.get("/api/health").status_code == 200


def test_ipv6_addresses_share_an_allowance_per_64_block(live_server: LiveServer) -> None:
    first = from_address(ApiClient(live_server.url, None), "2001:db8:1:2::7")
    same_block = from_address(ApiClient(live_server.url, None), "2001:db8:1:2:ffff::9")
    next_block = from_address(ApiClient(live_server.url, None), "2001:db8:1:3::7")
    use_up_allowance(first)

    assert same_block.get("/api/health").status_code == 429
    assert next_block.get("/api/health").status_code == 200


def test_requests_refused_for_a_bad_token_use_up_the_allowance(
    make_client: Callable[..., ApiClient],
) -> None:
    """Guessing tokens is limited: each 401 counts, and past the limit the answer is 429."""
    guesser = make_client(token=token_for(uuid.uuid4(), audience="anon"))

    statuses = [guesser.get("/api/agents").status_code for _ in range(BURST + 1)]

    assert statuses == [401] * BURST + [429]


def test_each_failed_token_exchange_counts_once(make_client: Callable[..., ApiClient]) -> None:
    guesser = make_client(token="not.a.jwt")

    statuses = [guesser.post("/api/auth/exchange-token").status_code for _ in range(BURST + 1)]

    assert statuses == [401] * BURST + [429]


def test_the_dashboard_and_unknown_paths_share_the_anonymous_allowance(
    anonymous: ApiClient,
) -> None:
    statuses = [
        anonymous.get(path).status_code for path in ("/", "/api/nothing-here", "/api/health", "/")
    ]

    assert statuses == [200, 404, 200, 429]


def test_the_limit_lets_requests_through_while_redis_is_down(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url,
        f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        tmp_path / "data",
        unauthenticated_rate_limit=1,
        unauthenticated_rate_burst=1,
    )
    with LiveServer(settings) as server:
        statuses = [requests.get(server.url + "/", timeout=10).status_code for _ in range(3)]

    assert statuses == [200, 200, 200]
