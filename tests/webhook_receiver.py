"""A loopback HTTP server standing in for a user's webhook endpoint: it records every POST, answers
with scripted status codes (then 200), and can hold a request until the test releases it."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# However long a test waits, a held request is answered after this.
MAX_HOLD_SECONDS = 30


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        """The JSON body."""
        document: dict[str, Any] = json.loads(self.body)
        return document

    @property
    def event_id(self) -> str:
        """The `Conveyor-Event-Id` header."""
        return self.headers["conveyor-event-id"]


def verify(body: bytes, header: str, secret: str, *, tolerance: int = 300) -> bool:
    """Check a `Conveyor-Signature` as docs/webhooks.md tells users to: any v1 that matches the
    HMAC-SHA256 of "<t>.<body>" under secret, with t recent."""
    parts = [part.split("=", 1) for part in header.split(",")]
    timestamps = [value for key, value in parts if key == "t"]
    signatures = [value for key, value in parts if key == "v1"]
    if len(timestamps) != 1 or abs(time.time() - int(timestamps[0])) > tolerance:
        return False
    expected = hmac.new(
        secret.encode(), timestamps[0].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


class QuietServer(ThreadingHTTPServer):
    """A threading server that does not print a traceback for a client that gave up."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # e.g. the sender refused our certificate: the test asserts on what it recorded


@dataclass
class Receiver:
    """The server; `url` is where to point an endpoint."""

    statuses: deque[int] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    hold_first: bool = False
    # Sent as Location with every answer (to check that redirects are not followed).
    location: str | None = None
    # Serve https://localhost with this context instead of http://127.0.0.1.
    tls: ssl.SSLContext | None = None
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._server = QuietServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}/hooks"
        if self.tls is not None:
            # The handshake happens in the handler's thread, where a failed one is closed.
            self._server.socket = self.tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.url = f"https://localhost:{self._server.server_port}/hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with these status codes, in order (then 200)."""
        self.statuses.extend(statuses)

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """The requests once at least count arrived; fails the test after timeout."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self.received)} of {count} webhook requests within {timeout} s"
                    )
                self._arrived.wait(left)
            return list(self.received)

    def _record(self, request: Received) -> tuple[int, bool]:
        with self._arrived:
            self.received.append(request)
            self._arrived.notify_all()
            hold = self.hold_first and len(self.received) == 1
            return (self.statuses.popleft() if self.statuses else 200), hold

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {key.lower(): value for key, value in self.headers.items()}
                status, hold = receiver._record(Received(self.path, headers, body))
                if hold:
                    receiver.holding.set()
                    receiver.release.wait(MAX_HOLD_SECONDS)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    if receiver.location:
                        self.send_header("Location", receiver.location)
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender is gone (killed mid-request): nobody to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def self_signed_tls(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for `localhost`, and the certificate's
    path (to trust it as a CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = folder / "receiver.pem"
    key_path = folder / "receiver.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path
