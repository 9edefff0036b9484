"""A loopback server that speaks the part of Stripe's API Conveyor calls (stripe-python reaches it
through `api_base`), and helpers that sign webhook deliveries the way Stripe does.

Implemented: `POST /v1/customers`, `POST /v1/checkout/sessions` (form-encoded, nested keys),
`GET /v1/events` (the events a test published). Idempotency-Key works as Stripe's does: the same
key and parameters replay the first answer, other parameters are an `idempotency_error`. A test
can script the next answers as Stripe errors. Builders make the event objects Stripe sends.

Billing reads: `GET /v1/subscriptions/<id>` (what a test put in `subscriptions`) and
`GET /v1/invoice_payments` by `invoice` or `payment[payment_intent]` (from `invoice_payments`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

SECRET_KEY = "sk_test_conveyor"


def sign(payload: bytes, secret: str, *, timestamp: int | None = None) -> str:
    """The Stripe-Signature header Stripe sends: `t=<unix time>,v1=<HMAC-SHA256 of "t.body">`."""
    at = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def event(event_type: str, obj: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    """A Stripe event envelope around obj."""
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "type": event_type,
        "created": int(time.time()) if created is None else created,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "data": {"object": obj},
    }


# Objects as Stripe sends them in events, for a Conveyor user.


def credit_pack_session(
    user: uuid.UUID, *, credits: int = 100, paid: bool = True
) -> dict[str, Any]:
    session_id = f"cs_test_{uuid.uuid4().hex}"
    return {
        "id": session_id,
        "object": "checkout.session",
        "mode": "payment",
        "client_reference_id": str(user),
        "customer": f"cus_{uuid.uuid4().hex[:14]}",
        "payment_intent": f"pi_{uuid.uuid4().hex[:14]}",
        "payment_status": "paid" if paid else "unpaid",
        "amount_total": 1000,
        "currency": "usd",
        "metadata": {
            "conveyor_user_id": str(user),
            "conveyor_price_id": "price_pack_100",
            "conveyor_credits": str(credits),
        },
    }


def subscription(
    user: uuid.UUID | None,
    sub_id: str,
    *,
    price: str = "price_basic",
    status: str = "active",
    customer: str = "cus_subscriber",
    cancel_at_period_end: bool = False,
) -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "metadata": {"conveyor_user_id": str(user)} if user else {},
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_1",
                    "price": {"id": price, "object": "price"},
                    "current_period_start": now,
                    "current_period_end": now + 30 * 86400,
                }
            ],
        },
    }


def invoice(sub_id: str, customer: str, *, price: str = "price_basic") -> dict[str, Any]:
    return {
        "id": f"in_{uuid.uuid4().hex[:14]}",
        "object": "invoice",
        "customer": customer,
        "amount_paid": 2000,
        "currency": "usd",
        "payment_intent": f"pi_{uuid.uuid4().hex[:14]}",
        "parent": {"subscription_details": {"subscription": sub_id}},
        "lines": {"data": [{"pricing": {"price_details": {"price": price}}}]},
    }


def nested_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (`a[b][0][c]=v`) back into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if isinstance(node, list):
                position = int(part)
                while len(node) <= position:
                    node.append({})
                if last:
                    node[position] = value
                else:
                    node = node[position]
                continue
            if last:
                node[part] = value
            else:
                following = parts[index + 1]
                node = node.setdefault(part, [] if following.isdigit() else {})
    return root


@dataclass
class Request:
    """One request the fake received."""

    method: str
    path: str
    params: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeStripe:
    """The server, what it saw, and what it will answer."""

    requests: list[Request] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoice_payments: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._errors: deque[tuple[int, dict[str, Any]]] = deque()
        self._idempotent: dict[str, tuple[dict[str, Any], tuple[int, dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeStripe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        """Answer the next API request with this Stripe error."""
        body = {
            "error": {"type": error_type, "message": message, **({"code": code} if code else {})}
        }
        with self._lock:
            self._errors.append((status, body))

    def calls(self, path: str) -> list[Request]:
        """The requests made to path."""
        return [r for r in self.requests if r.path == path]

    def _answer(
        self, method: str, path: str, params: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(Request(method, path, params, headers))
            if headers.get("authorization") != f"Bearer {SECRET_KEY}":
                return 401, {
                    "error": {
                        "type": "invalid_request_error",
                        "message": "Invalid API Key provided",
                    }
                }
            if self._errors:
                return self._errors.popleft()
            key = headers.get("idempotency-key")
            if method == "POST" and key:
                seen = self._idempotent.get(key)
                if seen is not None:
                    if seen[0] != params:
                        return 400, {
                            "error": {
                                "type": "idempotency_error",
                                "message": "Keys for idempotent requests can only be used with the "
                                "same parameters they were first used with.",
                            }
                        }
                    return seen[1]
            answer = self._route(method, path, params)
            if method == "POST" and key and answer[0] == 200:
                self._idempotent[key] = (params, answer)
            return answer

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        billing = self._billing_read(method, path, params)
        if billing is not None:
            return billing
        if (method, path) == ("POST", "/v1/customers"):
            return 200, {
                "id": f"cus_{uuid.uuid4().hex[:14]}",
                "object": "customer",
                "email": params.get("email"),
                "metadata": params.get("metadata", {}),
            }
        if (method, path) == ("POST", "/v1/checkout/sessions"):
            session_id = f"cs_test_{uuid.uuid4().hex}"
            return 200, {
                "id": session_id,
                "object": "checkout.session",
                "mode": params.get("mode"),
                "url": f"https://checkout.stripe.com/c/pay/{session_id}",
                "customer": params.get("customer"),
                "client_reference_id": params.get("client_reference_id"),
                "metadata": params.get("metadata", {}),
                "payment_status": "unpaid",
                "status": "open",
                "success_url": params.get("success_url"),
                "cancel_url": params.get("cancel_url"),
            }
        if method == "GET" and path.startswith("/v1/checkout/sessions/"):
            # A session as Stripe has it now: as the newest event the test published about it
            # (a paid session has its checkout.session.completed event at Stripe).
            wanted = path.removeprefix("/v1/checkout/sessions/")
            for published in reversed(self.events):
                if published["data"]["object"].get("id") == wanted:
                    return 200, published["data"]["object"]
            return 404, {
                "error": {
                    "type": "invalid_request_error",
                    "code": "resource_missing",
                    "param": "session",
                    "message": f"No such checkout.session: '{wanted}'",
                }
            }
        if (method, path) == ("GET", "/v1/events"):
            gte = int(params.get("created", {}).get("gte", 0))
            types = set(params.get("types", []))
            listed = [
                e
                for e in reversed(self.events)
                if e["created"] >= gte and (not types or e["type"] in types)
            ]
            return 200, {"object": "list", "url": "/v1/events", "has_more": False, "data": listed}
        return 404, {
            "error": {
                "type": "invalid_request_error",
                "message": f"Unrecognized request URL ({method}: {path})",
            }
        }

    def _billing_read(
        self, method: str, path: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]] | None:
        """The subscription and invoice payment reads, or None for another route."""
        if method != "GET":
            return None
        if path.startswith("/v1/subscriptions/"):
            sub_id = path.removeprefix("/v1/subscriptions/")
            found = self.subscriptions.get(sub_id)
            if found is None:
                return 404, {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "resource_missing",
                        "param": "id",
                        "message": f"No such subscription: '{sub_id}'",
                    }
                }
            return 200, found
        if path == "/v1/invoice_payments":
            invoice = params.get("invoice")
            intent = (params.get("payment") or {}).get("payment_intent")
            listed = [
                p
                for p in self.invoice_payments
                if (invoice is None or p["invoice"] == invoice)
                and (intent is None or p["payment"].get("payment_intent") == intent)
            ]
            return 200, {
                "object": "list",
                "url": "/v1/invoice_payments",
                "has_more": False,
                "data": listed,
            }
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _serve(self, method: str) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                pairs = parse_qsl(body if method == "POST" else split.query, keep_blank_values=True)
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, answer = fake._answer(method, split.path, nested_form(pairs), headers)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Request-Id", f"req_{uuid.uuid4().hex[:14]}")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._serve("POST")

            def do_GET(self) -> None:
                self._serve("GET")

        return Handler
