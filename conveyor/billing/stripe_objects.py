"""Reading Stripe objects as events carry them: ids that may be expanded objects, and the fields
whose place changed between API versions (invoices' subscription, price and payments,
subscriptions' period)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True)
class PaymentRef:
    """One payment that paid for something: its PaymentIntent, its charge, or both."""

    payment_intent: str | None
    charge: str | None


def invoice_subscription(invoice: dict[str, Any]) -> str | None:
    """The subscription an invoice bills (older API: `subscription`; newer: under `parent`)."""
    direct = object_id(invoice.get("subscription"))
    if direct:
        return direct
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return object_id(details.get("subscription"))


def invoice_payment_refs(invoice: dict[str, Any]) -> list[PaymentRef]:
    """The payments an invoice names: `payment_intent`/`charge` before API version 2025-03-31
    (basil); after it, the paid InvoicePayments in `payments`, when the payload includes them."""
    legacy = PaymentRef(object_id(invoice.get("payment_intent")), object_id(invoice.get("charge")))
    if legacy.payment_intent or legacy.charge:
        return [legacy]
    listed = (invoice.get("payments") or {}).get("data") or []
    return [ref for ref in map(invoice_payment_ref, listed) if ref is not None]


def invoice_payment_ref(invoice_payment: dict[str, Any]) -> PaymentRef | None:
    """What a paid InvoicePayment was paid with (`payment.payment_intent`, or `payment.charge`
    for a charge without one); None while it is open or once canceled."""
    if invoice_payment.get("status", "paid") != "paid":
        return None
    payment = invoice_payment.get("payment") or {}
    ref = PaymentRef(object_id(payment.get("payment_intent")), object_id(payment.get("charge")))
    return ref if ref.payment_intent or ref.charge else None


def line_price(line: dict[str, Any]) -> str | None:
    """An invoice line's price id, in the older (`price`) or newer (`pricing`) shape."""
    price = object_id(line.get("price"))
    if price:
        return price
    details = (line.get("pricing") or {}).get("price_details") or {}
    return object_id(details.get("price"))


def subscription_price(subscription: dict[str, Any]) -> str | None:
    """The price of a subscription's first item."""
    items = (subscription.get("items") or {}).get("data") or []
    return object_id(items[0].get("price")) if items else None


def subscription_period(subscription: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The current period, top-level (older API) or on the first item (newer)."""
    items = (subscription.get("items") or {}).get("data") or []
    source = subscription if "current_period_start" in subscription else (items[0] if items else {})
    return timestamp(source.get("current_period_start")), timestamp(
        source.get("current_period_end")
    )


def object_id(value: Any) -> str | None:
    """An id from a field that holds either the id or the expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def parse_uuid(value: Any) -> UUID | None:
    """value as a UUID, or None."""
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


def timestamp(value: Any) -> datetime | None:
    """A Stripe Unix timestamp as an aware datetime."""
    return datetime.fromtimestamp(int(value), UTC) if value is not None else None
