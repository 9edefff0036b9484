"""Calls to Stripe's API: the client built from settings, and Stripe's errors in our terms."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import stripe

from conveyor.errors import IdempotencyKeyReused, PaymentProviderError, PaymentsNotConfigured
from conveyor.settings import Settings

# Network failures and 409/429/5xx are retried by stripe-python with the same idempotency key.
NETWORK_RETRIES = 2
# The reconciler looks this far back in Stripe's event list (Stripe keeps 30 days).
RECONCILE_LOOKBACK_SECONDS = 3 * 24 * 3600
RECONCILE_MAX_EVENTS = 1000
# An invoice is paid in a few payments; past this many, the rest are not read.
INVOICE_PAYMENTS_MAX = 100


def client_for(settings: Settings) -> stripe.StripeClient:
    """A Stripe client for STRIPE_SECRET_KEY (and STRIPE_API_BASE, a local server in tests)."""
    if settings.stripe_secret_key is None:
        raise PaymentsNotConfigured()
    api_base = settings.stripe_api_base.rstrip("/") if settings.stripe_api_base else None
    return stripe.StripeClient(
        settings.stripe_secret_key.get_secret_value(),
        base_addresses={"api": api_base} if api_base else {},
        max_network_retries=NETWORK_RETRIES,
        http_client=http_client(settings.stripe_timeout_seconds, os.getpid()),
    )


@lru_cache(maxsize=4)
def http_client(timeout: float, pid: int) -> stripe.HTTPClient:
    """One pooled HTTP client per process (pid: never one inherited across a fork) with a
    timeout: stripe-python's default waits 80 s, or for ever when it falls back to urllib.
    requests rather than httpx: stripe-python's httpx client sends bodies in a way httpx
    deprecates."""
    return stripe.RequestsClient(timeout=timeout)


@contextmanager
def provider_errors() -> Iterator[None]:
    """Stripe's refusals and outages as PaymentProviderError (502) with Stripe's message; an
    idempotency key reused for another request as IdempotencyKeyReused (409)."""
    try:
        yield
    except stripe.IdempotencyError as exc:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used for a different checkout; use a new key."
        ) from exc
    except stripe.StripeError as exc:
        message = exc.user_message or str(exc) or type(exc).__name__
        raise PaymentProviderError(
            f"Stripe: {message}", stripe_code=exc.code, stripe_status=exc.http_status
        ) from exc


def recent_events(client: stripe.StripeClient, types: list[str]) -> Iterator[dict[str, Any]]:
    """Stripe's events of these types from the last days, newest first, as plain dicts (at most
    RECONCILE_MAX_EVENTS)."""
    since = int(time.time()) - RECONCILE_LOOKBACK_SECONDS
    with provider_errors():
        page = client.v1.events.list({"created": {"gte": since}, "types": types, "limit": 100})
        for count, event in enumerate(page.auto_paging_iter()):
            if count >= RECONCILE_MAX_EVENTS:
                return
            yield event.to_dict()


def retrieve_subscription(settings: Settings, subscription: str) -> dict[str, Any]:
    """The subscription as Stripe has it now (`GET /v1/subscriptions/<id>`), as a plain dict."""
    with provider_errors():
        found = client_for(settings).v1.subscriptions.retrieve(subscription)
    return found.to_dict()


def invoice_payments(
    settings: Settings, *, invoice: str | None = None, payment_intent: str | None = None
) -> list[dict[str, Any]]:
    """The InvoicePayments of an invoice, or those made with a PaymentIntent
    (`GET /v1/invoice_payments`), as plain dicts; at most INVOICE_PAYMENTS_MAX."""
    client = client_for(settings)
    with provider_errors():
        if invoice is not None:
            page = client.v1.invoice_payments.list({"invoice": invoice, "limit": 100})
        elif payment_intent is not None:
            page = client.v1.invoice_payments.list(
                {
                    "payment": {"type": "payment_intent", "payment_intent": payment_intent},
                    "limit": 100,
                }
            )
        else:
            raise ValueError("name an invoice or a payment intent")
        listed = []
        for payment in page.auto_paging_iter():
            listed.append(payment.to_dict())
            if len(listed) >= INVOICE_PAYMENTS_MAX:
                break
    return listed
