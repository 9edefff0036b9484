"""Reading Stripe objects as events carry them: ids that may be expanded objects, and the fields
whose place changed between API versions (invoices' subscription and price, subscriptions'
period)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID


def invoice_subscription(invoice: dict[str, Any]) -> str | None:
    """The subscription an invoice bills (older API: `subscription`; newer: under `parent`)."""
    direct = object_id(invoice.get("subscription"))
    if direct:
        return direct
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return object_id(details.get("subscription"))


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
