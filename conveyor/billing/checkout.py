"""Stripe Checkout sessions for a user: a plan (subscription) or a credit pack (one payment),
only at prices in the catalogue (STRIPE_PRICES), for the user's own Stripe customer."""

from __future__ import annotations

import uuid
from typing import Literal
from uuid import UUID

import stripe
from pydantic import AnyHttpUrl, BaseModel, Field, field_validator
from stripe.params import CustomerCreateParams
from stripe.params.checkout import SessionCreateParams

from conveyor.billing.event_context import META_CREDITS, META_PLAN, META_PRICE, META_USER
from conveyor.billing.stripe_api import provider_errors
from conveyor.db import Database
from conveyor.errors import InvalidInput, UnknownPrice
from conveyor.payload import Payload
from conveyor.setting_values import StripePrice
from conveyor.settings import Settings

MAX_QUANTITY = 100
RESERVED_METADATA_PREFIX = "conveyor_"


class CheckoutRequest(Payload):
    """`POST /api/payments/create-checkout-session`; every field has a default from settings."""

    price_id: str | None = Field(default=None, min_length=1, max_length=255)
    mode: Literal["subscription", "payment"] | None = None
    success_url: AnyHttpUrl | None = None
    cancel_url: AnyHttpUrl | None = None
    customer_email: str | None = Field(
        default=None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    )
    # Stripe's limits: 50 keys, keys up to 40 characters, values up to 500.
    metadata: dict[str, str] = Field(default_factory=dict, max_length=40)
    quantity: int = Field(default=1, ge=1, le=MAX_QUANTITY)

    @field_validator("metadata")
    @classmethod
    def _metadata_within_limits(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not 1 <= len(key) <= 40 or len(item) > 500:
                raise ValueError("metadata keys are 1-40 characters and values at most 500")
            if key.startswith(RESERVED_METADATA_PREFIX):
                raise ValueError(
                    f"metadata keys starting with {RESERVED_METADATA_PREFIX!r} are Conveyor's own"
                )
        return value


class CheckoutSession(BaseModel):
    """Where to send the user to pay."""

    id: str
    url: str | None


def create_checkout_session(
    db: Database,
    settings: Settings,
    client: stripe.StripeClient,
    *,
    user_id: UUID,
    email: str | None,
    request: CheckoutRequest,
    idempotency_key: str | None,
) -> CheckoutSession:
    """Create a Checkout session for user_id. The same Idempotency-Key returns the same session
    (Stripe keeps keys 24 hours); without one, stripe-python's own retries still reuse a key."""
    price_id, price = catalogue_price(settings, request)
    mode = request.mode or (price.mode if request.price_id else settings.stripe_mode)
    if mode != price.mode:
        raise InvalidInput(
            f"Price {price_id} sells {'a plan' if price.plan else 'credits'}: use mode "
            f"{price.mode!r}, not {mode!r}."
        )
    if mode == "subscription" and request.quantity != 1:
        raise InvalidInput("A plan is bought one at a time: quantity must be 1.")
    success_url = str(request.success_url or settings.stripe_success_url or "")
    cancel_url = str(request.cancel_url or settings.stripe_cancel_url or "")
    if not success_url or not cancel_url:
        raise InvalidInput(
            "Pass success_url and cancel_url, or set STRIPE_SUCCESS_URL and STRIPE_CANCEL_URL."
        )
    customer = customer_for(db, client, user_id, request.customer_email or email)
    key = f"conveyor-checkout-{user_id}-{idempotency_key or uuid.uuid4()}"
    metadata = {**request.metadata, META_USER: str(user_id), META_PRICE: price_id}
    if price.plan is not None:
        metadata[META_PLAN] = price.plan
    if price.credits is not None:
        metadata[META_CREDITS] = str(price.credits * request.quantity)
    params: SessionCreateParams = {
        "mode": mode,
        "line_items": [{"price": price_id, "quantity": request.quantity}],
        "success_url": success_url,
        "cancel_url": cancel_url,
        "client_reference_id": str(user_id),
        "customer": customer,
        "metadata": metadata,
    }
    if mode == "subscription":
        params["subscription_data"] = {
            "metadata": {META_USER: str(user_id), META_PLAN: price.plan or ""}
        }
    else:
        params["payment_intent_data"] = {"metadata": {META_USER: str(user_id)}}
    with provider_errors():
        session = client.v1.checkout.sessions.create(params, {"idempotency_key": key})
    return CheckoutSession(id=session.id, url=session.url)


def catalogue_price(settings: Settings, request: CheckoutRequest) -> tuple[str, StripePrice]:
    """The requested (or default) price and what it sells, or UnknownPrice."""
    price_id = request.price_id or settings.stripe_price_id
    if price_id is None:
        raise InvalidInput("Name a price_id, or set STRIPE_PRICE_ID for a default.")
    price = settings.stripe_prices.get(price_id)
    if price is None:
        known = ", ".join(sorted(settings.stripe_prices)) or "none configured"
        raise UnknownPrice(f"Price {price_id!r} is not sold here (prices: {known}).")
    return price_id, price


def customer_for(
    db: Database, client: stripe.StripeClient, user_id: UUID, email: str | None
) -> str:
    """The user's Stripe customer, created once (an idempotency key per user makes concurrent
    first checkouts agree on one customer) and remembered on the account."""
    with db.transaction() as conn:
        conn.execute("select conveyor_ensure_account(%s)", (user_id,))
        row = conn.execute(
            "select stripe_customer_id from user_accounts where user_id = %s", (user_id,)
        ).fetchone()
    if row and row["stripe_customer_id"]:
        return str(row["stripe_customer_id"])
    params: CustomerCreateParams = {"metadata": {META_USER: str(user_id)}}
    if email:
        params["email"] = email
    with provider_errors():
        customer = client.v1.customers.create(
            params, {"idempotency_key": f"conveyor-customer-{user_id}"}
        )
    with db.transaction() as conn:
        stored = conn.execute(
            """
            update user_accounts
               set stripe_customer_id = coalesce(stripe_customer_id, %s), updated_at = now()
             where user_id = %s
            returning stripe_customer_id
            """,
            (customer.id, user_id),
        ).fetchone()
    assert stored is not None
    return str(stored["stripe_customer_id"])
