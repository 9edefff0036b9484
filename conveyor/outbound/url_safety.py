"""Where outbound webhooks may go: http(s) URLs whose every resolved address is public, unless
private targets are allowed (development, tests). Checked at registration and again at delivery,
on the addresses the sender then connects to, so a DNS answer that changes cannot redirect it."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from conveyor.errors import BadRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2000


class InvalidWebhookUrl(BadRequest):
    """The webhook URL is not an absolute http(s) URL with a host."""

    code = "INVALID_WEBHOOK_URL"


class UnsafeWebhookUrl(BadRequest):
    """The webhook URL points at a loopback, link-local, private or otherwise non-public address;
    use a public address (or set CONVEYOR_ALLOW_PRIVATE_WEBHOOKS=true in development)."""

    code = "UNSAFE_WEBHOOK_URL"


@dataclass(frozen=True)
class Target:
    """A parsed webhook URL: where to connect and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str


def parse_url(url: str) -> Target:
    """The target of an http(s) URL, or InvalidWebhookUrl saying what is wrong."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookUrl(f"The webhook URL is longer than {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookUrl(f"The webhook URL cannot be parsed: {exc}.") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidWebhookUrl("The webhook URL must start with https:// (or http://).")
    if not parts.hostname:
        raise InvalidWebhookUrl("The webhook URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhookUrl("Put no credentials in the webhook URL; verify the signature.")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, parts.hostname, port or default_port, path)


def is_public(address: IPAddress) -> bool:
    """Whether an address is globally routable unicast (an IPv4-mapped IPv6 is judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def resolve(target: Target, *, allow_private: bool) -> list[IPAddress]:
    """The target's addresses, all of them checked; UnsafeWebhookUrl if any is not public
    (one private answer is enough to refuse: the resolver could hand out either)."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidWebhookUrl(f"The webhook host {target.host!r} does not resolve.") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not allow_private and not is_public(address):
            raise UnsafeWebhookUrl(
                f"The webhook host {target.host!r} resolves to {address}, which is not a public "
                "address; use a public URL."
            )
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise InvalidWebhookUrl(f"The webhook host {target.host!r} has no address.")
    return addresses


def check_webhook_url(url: str, *, allow_private: bool) -> str:
    """url if it may receive webhooks now, else InvalidWebhookUrl / UnsafeWebhookUrl."""
    resolve(parse_url(url), allow_private=allow_private)
    return url
