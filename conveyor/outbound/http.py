"""Signing and sending one webhook request: connect only to an address url_safety approved, with
connect and read timeouts, no redirects followed, and at most a few KiB of the answer read."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

from conveyor.errors import ConveyorError
from conveyor.outbound.url_safety import IPAddress, parse_url, resolve

SIGNATURE_HEADER = "Conveyor-Signature"
EVENT_ID_HEADER = "Conveyor-Event-Id"
USER_AGENT = "Conveyor-Webhooks/1"
# Only the status matters; the rest of a large answer is never read.
MAX_RESPONSE_BYTES = 4096


def signature(body: bytes, secrets: Sequence[str], *, timestamp: int) -> str:
    """`t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<body>">`, one v1 per secret (two while rotating)."""
    signed = f"{timestamp}.".encode() + body
    parts = [f"t={timestamp}"]
    for secret in secrets:
        parts.append("v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest())
    return ",".join(parts)


@dataclass(frozen=True)
class SendResult:
    """What one request did: a status code, or the error that prevented one."""

    status_code: int | None
    latency_ms: int
    error: str | None

    @property
    def ok(self) -> bool:
        """A 2xx answer: the receiver has the event."""
        return self.status_code is not None and 200 <= self.status_code < 300


def send(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    connect_timeout: float,
    read_timeout: float,
) -> SendResult:
    """POST body to url once. Never raises for the receiver's faults: a refused address, a
    timeout or a TLS error is a result with `error` set."""
    started = time.monotonic()
    try:
        status = _post(url, body, headers, allow_private, connect_timeout, read_timeout)
    except ConveyorError as exc:
        return SendResult(None, _elapsed_ms(started), f"{exc.code}: {exc.message}")
    except (OSError, http.client.HTTPException) as exc:
        return SendResult(None, _elapsed_ms(started), f"{type(exc).__name__}: {exc}"[:2000])
    error = None if 200 <= status < 300 else f"HTTP {status}"
    return SendResult(status, _elapsed_ms(started), error)


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    allow_private: bool,
    connect_timeout: float,
    read_timeout: float,
) -> int:
    target = parse_url(url)
    # Connect to an address just checked, never to whatever a second lookup would return.
    sock = _connect(resolve(target, allow_private=allow_private), target.port, connect_timeout)
    try:
        sock.settimeout(read_timeout)
        conn: http.client.HTTPConnection
        if target.scheme == "https":
            context = ssl.create_default_context()
            # Handshake after the assignment, so a failed one still closes the TLS socket.
            sock = context.wrap_socket(
                sock, server_hostname=target.host, do_handshake_on_connect=False
            )
            sock.do_handshake()
            conn = http.client.HTTPSConnection(target.host, target.port, context=context)
        else:
            conn = http.client.HTTPConnection(target.host, target.port)
        conn.sock = sock  # http.client connects only when it has no socket
        conn.request(
            "POST",
            target.path,
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "Connection": "close",
                **headers,
            },
        )
        response = conn.getresponse()
        try:
            response.read(MAX_RESPONSE_BYTES)
        finally:
            response.close()  # the rest of a long answer is dropped with the connection
        # A 3xx is an answer like any other non-2xx: following it could lead anywhere.
        return response.status
    finally:
        sock.close()


def _connect(addresses: Sequence[IPAddress], port: int, timeout: float) -> socket.socket:
    """A socket to the first of the checked addresses that accepts (IPv6 or IPv4 first, as
    resolved); the last error if none does."""
    error: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((str(address), port), timeout=timeout)
        except OSError as exc:
            error = exc
    assert error is not None  # resolve() never returns an empty list
    raise error
