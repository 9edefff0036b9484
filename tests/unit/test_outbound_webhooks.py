"""The pure parts of outbound webhooks: which addresses are public, URL parsing, signatures that
Stripe's own verifier accepts, and the retry schedule."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest
import stripe

from conveyor.outbound.delivery import backoff_seconds
from conveyor.outbound.http import signature
from conveyor.outbound.url_safety import InvalidWebhookUrl, is_public, parse_url
from conveyor.settings import Settings


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.31.255.255", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),  # noqa: S104 - an address under test, not a bind
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:93.184.215.14", True),
    ],
)
def test_only_globally_routable_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_a_url_is_parsed_into_where_to_connect_and_what_to_ask() -> None:
    target = parse_url("https://Example.COM:8443/a/b?c=1")

    assert (target.scheme, target.host, target.port, target.path) == (
        "https",
        "example.com",
        8443,
        "/a/b?c=1",
    )
    assert parse_url("http://example.com").port == 80
    assert parse_url("http://example.com").path == "/"


@pytest.mark.parametrize("url", ["ftp://a.example/x", "//a.example/x", "http://a.example:99999/"])
def test_a_url_without_an_http_scheme_or_a_valid_port_is_invalid(url: str) -> None:
    with pytest.raises(InvalidWebhookUrl):
        parse_url(url)


def test_the_signature_verifies_with_stripes_own_verifier() -> None:
    """Receivers can use code they know: Stripe's scheme, byte for byte."""
    body = b'{"id":"evt_1","type":"run.completed"}'
    header = signature(body, ["whsec_abcdefghijklmnop"], timestamp=int(time.time()))

    stripe.WebhookSignature.verify_header(body.decode(), header, "whsec_abcdefghijklmnop", 300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body.decode(), header, "whsec_other_secret__", 300)


def test_retries_back_off_exponentially_with_jitter_up_to_the_cap(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=tmp_path,
        webhook_retry_base_seconds=30,
        webhook_retry_max_seconds=3600,
    )

    waits = [backoff_seconds(attempt, settings) for attempt in (1, 2, 3, 8, 20)]

    assert 15 <= waits[0] <= 30
    assert 30 <= waits[1] <= 60
    assert 60 <= waits[2] <= 120
    assert 1800 <= waits[3] <= 3600
    assert 1800 <= waits[4] <= 3600
