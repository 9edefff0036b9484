"""Stripe objects shaped like the API reference's examples (Subscription, Invoice, InvoicePayment,
Charge), in the current shape (API version 2025-03-31 `basil` and later) and, where it differs,
the one before it (`acacia`), with the ids and amounts a test chooses.

Only the fields that changed between versions or that Conveyor reads vary; the rest are the
reference example's, so a payload looks like a real delivery.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.fake_stripe import event

CURRENT_API = "2026-10-28.endive"
PRE_BASIL_API = "2025-02-24.acacia"
MONTH = 30 * 86400


def versioned_event(
    event_type: str, obj: dict[str, Any], *, created: int | None = None, api: str = CURRENT_API
) -> dict[str, Any]:
    """An event envelope as an endpoint on API version api receives it."""
    return {**event(event_type, obj, created=created), "api_version": api}


def new_id(prefix: str) -> str:
    """An id in Stripe's form: prefix, underscore, 24 characters."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def price(price_id: str, amount: int = 2000) -> dict[str, Any]:
    """A monthly recurring Price."""
    return {
        "id": price_id,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": 1679431181,
        "currency": "usd",
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": None,
        "product": "prod_NZKdYqrwEYx6iK",
        "recurring": {
            "interval": "month",
            "interval_count": 1,
            "meter": None,
            "usage_type": "licensed",
        },
        "tax_behavior": "unspecified",
        "type": "recurring",
        "unit_amount": amount,
        "unit_amount_decimal": str(amount),
    }


def subscription(
    sub_id: str,
    customer: str,
    *,
    status: str = "active",
    price_id: str = "price_basic",
    cancel_at_period_end: bool = False,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Subscription with one item (the current period is on the item since basil)."""
    now = int(time.time())
    return {
        "id": sub_id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": now,
        "billing_cycle_anchor_config": None,
        "billing_mode": {"type": "classic"},
        "billing_thresholds": None,
        "cancel_at": None,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": now if status == "canceled" else None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": now,
        "currency": "usd",
        "customer": customer,
        "days_until_due": None,
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "ended_at": now if status == "canceled" else None,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "items": {
            "object": "list",
            "data": [
                {
                    "id": new_id("si"),
                    "object": "subscription_item",
                    "billing_thresholds": None,
                    "created": now,
                    "current_period_end": now + MONTH,
                    "current_period_start": now,
                    "discounts": [],
                    "metadata": {},
                    "price": price(price_id),
                    "quantity": 1,
                    "subscription": sub_id,
                    "tax_rates": [],
                }
            ],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        "latest_invoice": new_id("in"),
        "livemode": False,
        "metadata": metadata or {},
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": None,
        "payment_settings": {
            "payment_method_options": None,
            "payment_method_types": None,
            "save_default_payment_method": "off",
        },
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": now,
        "status": status,
        "test_clock": None,
        "transfer_data": None,
        "trial_end": None,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": None,
    }


def _invoice_base(invoice_id: str, customer: str, amount: int, status: str) -> dict[str, Any]:
    """The fields an Invoice has in every version."""
    now = int(time.time())
    paid = amount if status == "paid" else 0
    return {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Stripe Docs",
        "account_tax_ids": None,
        "amount_due": amount,
        "amount_paid": paid,
        "amount_remaining": amount - paid,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 1,
        "attempted": True,
        "auto_advance": False,
        "automatic_tax": {"enabled": False, "liability": None, "status": None},
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "created": now,
        "currency": "usd",
        "custom_fields": None,
        "customer": customer,
        "customer_email": "jennyrosen@example.com",
        "customer_name": "Jenny Rosen",
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "due_date": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "livemode": False,
        "metadata": {},
        "number": None,
        "period_end": now,
        "period_start": now - MONTH,
        "status": status,
        "status_transitions": {
            "finalized_at": now,
            "marked_uncollectible_at": None,
            "paid_at": now if status == "paid" else None,
            "voided_at": None,
        },
        "subtotal": amount,
        "total": amount,
        "webhooks_delivered_at": now,
    }


def invoice(
    sub_id: str,
    customer: str,
    *,
    amount: int = 2000,
    price_id: str = "price_basic",
    status: str = "paid",
    invoice_id: str | None = None,
    payments: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A subscription Invoice as basil and later send it: no charge or payment_intent; the
    subscription under `parent`, the price under `pricing`; `payments` only when included."""
    invoice_id = invoice_id or new_id("in")
    document = {
        **_invoice_base(invoice_id, customer, amount, status),
        "amount_overpaid": 0,
        "confirmation_secret": None,
        "parent": {
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": sub_id},
            "type": "subscription_details",
        },
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": new_id("il"),
                    "object": "line_item",
                    "amount": amount,
                    "currency": "usd",
                    "description": "1 \u00d7 Basic (at $20.00 / month)",
                    "invoice": invoice_id,
                    "parent": {
                        "invoice_item_details": None,
                        "subscription_item_details": {
                            "invoice_item": None,
                            "proration": False,
                            "proration_details": {"credited_items": None},
                            "subscription": sub_id,
                            "subscription_item": new_id("si"),
                        },
                        "type": "subscription_item_details",
                    },
                    "pricing": {
                        "price_details": {"price": price_id, "product": "prod_NZKdYqrwEYx6iK"},
                        "type": "price_details",
                        "unit_amount_decimal": str(amount),
                    },
                    "quantity": 1,
                }
            ],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
    }
    if payments is not None:
        document["payments"] = {
            "object": "list",
            "data": payments,
            "has_more": False,
            "total_count": len(payments),
            "url": f"/v1/invoices/{invoice_id}/payments",
        }
    return document


def pre_basil_invoice(
    sub_id: str,
    customer: str,
    *,
    charge: str,
    payment_intent: str,
    amount: int = 2000,
    price_id: str = "price_basic",
) -> dict[str, Any]:
    """A paid subscription Invoice as API versions before basil send it: `charge`,
    `payment_intent`, `paid` and `subscription` on the invoice, `price` on its line."""
    invoice_id = new_id("in")
    return {
        **_invoice_base(invoice_id, customer, amount, "paid"),
        "charge": charge,
        "paid": True,
        "paid_out_of_band": False,
        "payment_intent": payment_intent,
        "subscription": sub_id,
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": new_id("il"),
                    "object": "line_item",
                    "amount": amount,
                    "currency": "usd",
                    "description": "1 \u00d7 Basic (at $20.00 / month)",
                    "invoice": invoice_id,
                    "price": price(price_id, amount),
                    "proration": False,
                    "quantity": 1,
                    "subscription": sub_id,
                    "type": "subscription",
                }
            ],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
    }


def invoice_payment(
    invoice_id: str, payment_intent: str, amount: int, *, status: str = "paid"
) -> dict[str, Any]:
    """An InvoicePayment: one payment (a PaymentIntent) toward an invoice."""
    now = int(time.time())
    return {
        "id": new_id("inpay"),
        "object": "invoice_payment",
        "amount_paid": amount if status == "paid" else None,
        "amount_requested": amount,
        "created": now,
        "currency": "usd",
        "invoice": invoice_id,
        "is_default": True,
        "livemode": False,
        "payment": {"type": "payment_intent", "payment_intent": payment_intent},
        "status": status,
        "status_transitions": {
            "canceled_at": None,
            "paid_at": now if status == "paid" else None,
        },
    }


def charge(
    payment_intent: str,
    *,
    amount: int,
    amount_refunded: int,
    customer: str | None = None,
    charge_id: str | None = None,
    invoice: str | None = None,
) -> dict[str, Any]:
    """A card Charge after a refund. invoice: set only for API versions before basil, which
    still name the charge's invoice."""
    document = {
        "id": charge_id or new_id("ch"),
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": new_id("txn"),
        "billing_details": {
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": None,
            "name": None,
            "phone": None,
        },
        "calculated_statement_descriptor": "Stripe",
        "captured": True,
        "created": int(time.time()),
        "currency": "usd",
        "customer": customer,
        "description": None,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "fraud_details": {},
        "livemode": False,
        "metadata": {},
        "on_behalf_of": None,
        "outcome": {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": 32,
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        "paid": True,
        "payment_intent": payment_intent,
        "payment_method": new_id("pm"),
        "receipt_email": None,
        "receipt_url": None,
        "refunded": amount_refunded >= amount,
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded",
        "transfer_data": None,
        "transfer_group": None,
    }
    if invoice is not None:
        document["invoice"] = invoice
    return document


def conveyor_metadata(user: uuid.UUID) -> dict[str, str]:
    """The metadata Conveyor's checkout puts on a subscription of the basic plan."""
    return {"conveyor_user_id": str(user), "conveyor_plan": "basic"}


def subscription_event(
    event_type: str, sub: str, customer: str, user: uuid.UUID, status: str, created: int
) -> dict[str, Any]:
    """A customer.subscription.* event of user's basic subscription in status, sent at created."""
    return versioned_event(
        event_type,
        subscription(sub, customer, status=status, metadata=conveyor_metadata(user)),
        created=created,
    )
